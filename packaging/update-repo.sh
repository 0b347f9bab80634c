#!/usr/bin/env bash
# Builds the self-update repository that devices read (updates.server_url) from .deb files
# of one release, one per architecture:
#
#   packaging/update-repo.sh CLI OUT_DIR DEB...
#
# OUT_DIR/pool/                         the packages
# OUT_DIR/<channel>/manifest.json       for each channel in UPDATE_CHANNELS (default "stable
#                                       beta"), with manifest.json.sig beside it
# OUT_DIR/versions/<version>/manifest.json   the same release, for target_version / --version
# OUT_DIR/keys/<key id>.pub             the public key, for /etc/mcp-raspi/keys/ on devices
#
# CLI is an mcp-raspi program of the build host. Signing key: the secret key file
# UPDATE_KEY (KEYID.secret); without it, the first *.secret in UPDATE_KEY_DIR (default
# target/update-keys) is used, and a key pair is generated there when it has none: fine for
# tests, while a publisher keeps its own key offline and points UPDATE_KEY at it.
# UPDATE_EXPIRES_IN (default 90d) is how long devices accept the manifests; rebuild and
# re-sign before then. Any static HTTP server can serve OUT_DIR.
#
# Delta updates (experimental, updates.delta on the devices): UPDATE_DELTA_FROM lists the
# packages of earlier releases, separated by spaces; for each one whose architecture is
# among DEB..., the delta to this release goes into pool/ and the signed deltas.json of
# the release beside each manifest. A delta no smaller than its package is left out, since
# devices would not use it.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 CLI OUT_DIR DEB..." >&2
    exit 2
fi
cli=$(realpath "$1")
out=$(realpath -m "$2")
shift 2
channels=${UPDATE_CHANNELS:-stable beta}
expires_in=${UPDATE_EXPIRES_IN:-90d}
key_dir=$(realpath -m "${UPDATE_KEY_DIR:-target/update-keys}")
key=${UPDATE_KEY:-}

if [ -z "$key" ]; then
    mkdir -p "$key_dir"
    chmod 0700 "$key_dir"
    key=$(find "$key_dir" -maxdepth 1 -name '*.secret' | sort | head -n 1)
    if [ -z "$key" ]; then
        "$cli" release keygen --out "$key_dir" >&2
        key=$(find "$key_dir" -maxdepth 1 -name '*.secret' | sort | head -n 1)
    fi
fi
key_id=$(basename "$key" .secret)
public=$(dirname "$key")/$key_id.pub

mkdir -p "$out/pool" "$out/keys"
for deb in "$@"; do
    cp -f "$deb" "$out/pool/"
done
cp -f "$public" "$out/keys/"
debs=()
for deb in "$@"; do
    debs+=("$out/pool/$(basename "$deb")")
done

deltas=()
for old in ${UPDATE_DELTA_FROM:-}; do
    arch=$(dpkg-deb --field "$old" Architecture)
    for deb in "${debs[@]}"; do
        [ "$(dpkg-deb --field "$deb" Architecture)" = "$arch" ] || continue
        if ! dpkg --compare-versions "$(dpkg-deb --field "$old" Version)" lt "$(dpkg-deb --field "$deb" Version)"; then
            echo "left out: $old is not older than $deb" >&2
            continue
        fi
        made=$("$cli" release delta --from "$old" --to "$deb" --out-dir "$out/pool")
        echo "$made" >&2
        delta=${made%%: *}
        if [ "$(stat -c %s "$delta")" -lt "$(stat -c %s "$deb")" ]; then
            deltas+=("$delta")
        else
            echo "left out: $delta is no smaller than its package" >&2
            rm -f "$delta"
        fi
    done
done

publish() {
    # directory, channel, URL prefix from there to pool/
    mkdir -p "$1"
    "$cli" release manifest --channel "$2" --expires-in "$expires_in" --url-prefix "$3" \
        --out "$1/manifest.json" "${debs[@]}"
    "$cli" release sign --key "$key" "$1/manifest.json" >&2
    "$cli" release verify --keys "$out/keys" "$1/manifest.json" --deb "${debs[0]}" >/dev/null
    rm -f "$1/deltas.json" "$1/deltas.json.sig"
    if [ ${#deltas[@]} -gt 0 ]; then
        "$cli" release deltas --url-prefix "$3" --out "$1/deltas.json" "${deltas[@]}"
        "$cli" release sign --key "$key" "$1/deltas.json" >&2
        "$cli" release verify --keys "$out/keys" "$1/deltas.json" >/dev/null
    fi
}

first=${channels%% *}
for channel in $channels; do
    publish "$out/$channel" "$channel" "../pool/"
done
version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$out/$first/manifest.json")
publish "$out/versions/$version" "$first" "../../pool/"
echo "update repository in $out: version $version on ${channels}, signed by key $key_id" >&2
