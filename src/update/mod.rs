//! Installing releases and updating the server itself.
//!
//! [`release`] keeps the install root (`/opt/mcp-raspi`): one directory per installed
//! version and the `current` symlink the units run through. The package's postinst and the
//! self-update both go through it.

pub mod activate;
pub mod deb;
pub mod delta;
pub mod download;
pub mod install;
pub mod manifest;
pub mod release;
pub mod resolve;
pub mod state;
