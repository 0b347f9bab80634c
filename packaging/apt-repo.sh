#!/usr/bin/env bash
# Builds a signed APT repository for a fleet from .deb files:
#
#   packaging/apt-repo.sh OUT_DIR DEB...
#
# OUT_DIR/pool/main/          the packages
# OUT_DIR/dists/stable/       Packages per architecture, Release, InRelease and Release.gpg
# OUT_DIR/mcp-raspi-archive-keyring.gpg   the public key, for a `signed-by` source line:
#
#   deb [signed-by=/etc/apt/keyrings/mcp-raspi.gpg] https://apt.example.internal/ stable main
#
# Signing key: APT_REPO_GNUPGHOME (default target/apt-repo-gnupg) and APT_REPO_KEY (a key
# id, fingerprint or e-mail in it). Without APT_REPO_KEY, the first secret key of that home is
# used, and an ed25519 key is generated there when it has none: fine for tests, while a fleet
# points both variables at its own release key. Running again with more packages (a newer
# version) re-indexes and re-signs the whole repository.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 OUT_DIR DEB..." >&2
    exit 2
fi
out=$(realpath -m "$1")
shift
suite=stable
component=main
architectures="amd64 arm64 armhf"
gnupghome=$(realpath -m "${APT_REPO_GNUPGHOME:-target/apt-repo-gnupg}")
key=${APT_REPO_KEY:-}

mkdir -p "$gnupghome"
chmod 700 "$gnupghome"
gpg=(gpg --homedir "$gnupghome" --batch --quiet --no-tty)
# gpg starts an agent for the home on first use; it must not outlive this script.
trap 'gpgconf --homedir "$gnupghome" --kill gpg-agent 2>/dev/null || true' EXIT
if [ -z "$key" ]; then
    key=$("${gpg[@]}" --list-secret-keys --with-colons 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
fi
if [ -z "$key" ]; then
    echo "apt-repo: generating a signing key in $gnupghome"
    "${gpg[@]}" --passphrase '' --quick-generate-key \
        "mcp-raspi APT repository <apt@example.invalid>" ed25519 sign never
    key=$("${gpg[@]}" --list-secret-keys --with-colons | awk -F: '$1 == "fpr" { print $10; exit }')
fi

mkdir -p "$out/pool/$component"
for deb in "$@"; do
    install -m 0644 "$deb" "$out/pool/$component/"
done

cd "$out"
for arch in $architectures; do
    dir=dists/$suite/$component/binary-$arch
    mkdir -p "$dir"
    apt-ftparchive --arch "$arch" packages "pool/$component" >"$dir/Packages"
    gzip -9nc "$dir/Packages" >"$dir/Packages.gz"
done
release_options=(
    -o "APT::FTPArchive::Release::Origin=mcp-raspi"
    -o "APT::FTPArchive::Release::Label=mcp-raspi"
    -o "APT::FTPArchive::Release::Suite=$suite"
    -o "APT::FTPArchive::Release::Codename=$suite"
    -o "APT::FTPArchive::Release::Architectures=$architectures"
    -o "APT::FTPArchive::Release::Components=$component"
    -o "APT::FTPArchive::Release::Description=mcp-raspi packages"
)
rm -f "dists/$suite/Release" "dists/$suite/InRelease" "dists/$suite/Release.gpg"
apt-ftparchive "${release_options[@]}" release "dists/$suite" >"dists/$suite/Release.new"
mv "dists/$suite/Release.new" "dists/$suite/Release"
"${gpg[@]}" --yes --local-user "$key" --clearsign --output "dists/$suite/InRelease" "dists/$suite/Release"
"${gpg[@]}" --yes --local-user "$key" --armor --detach-sign --output "dists/$suite/Release.gpg" "dists/$suite/Release"
"${gpg[@]}" --yes --export "$key" >mcp-raspi-archive-keyring.gpg
chmod -R a+rX .

# The signature must verify with the exported key alone, as apt will check it.
gpgv --keyring "$PWD/mcp-raspi-archive-keyring.gpg" "dists/$suite/InRelease" 2>/dev/null
echo "apt-repo: $(find "pool/$component" -name '*.deb' | wc -l) packages in $PWD, signed by $key"
