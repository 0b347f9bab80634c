//! `i2c.*`: finding devices on an I2C bus and reading and writing their registers.
//!
//! The buses and device addresses a caller may use are listed under `i2c.buses`; they are
//! checked here before the request goes to the ops agent (which checks them again), so that
//! a refusal names the key an administrator changes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::system::read_only_spec;
use super::{Cx, Tool, ToolError, ToolSpec};
use crate::config::{I2cConfig, Role};
use crate::ipc::{Request, Response};

/// The 7-bit addresses a device may have: the others are reserved by the I2C specification.
const MIN_ADDRESS: u8 = 0x03;
const MAX_ADDRESS: u8 = 0x77;
/// The most bytes one read or write moves.
const MAX_TRANSFER: usize = 256;

pub(super) use crate::base::hex;
/// Checks that `address` is a 7-bit device address, then that `i2c.buses` allows it on `bus`.
fn check_device(i2c: &I2cConfig, bus: u8, address: u8) -> Result<(), ToolError> {
    if !(MIN_ADDRESS..=MAX_ADDRESS).contains(&address) {
        return Err(ToolError::invalid_argument(format!(
            "argument `address`: {address:#04x} is not a 7-bit device address; use 0x03 to 0x77 ({MIN_ADDRESS} to {MAX_ADDRESS})"
        )));
    }
    i2c.check_device(bus, address)?;
    Ok(())
}

fn check_length(what: &str, length: usize, min: usize) -> Result<(), ToolError> {
    if (min..=MAX_TRANSFER).contains(&length) {
        Ok(())
    } else {
        Err(ToolError::invalid_argument(format!(
            "argument `{what}`: {length} bytes is outside {min} to {MAX_TRANSFER}"
        )))
    }
}

fn unexpected(op: &str, response: &Response) -> ToolError {
    ToolError::internal(format!("unexpected answer from the ops agent to {op}: {}", response.kind()))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanArguments {
    /// I2C bus number (1 for the header's SDA/SCL pins); must be on i2c.buses.
    pub bus: u8,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FoundDevice {
    /// 7-bit address.
    pub address: u8,
    /// The address in hex, e.g. `0x48`.
    pub address_hex: String,
    /// Whether i2c.read and i2c.write may use it (it is on the bus's i2c.buses addresses).
    pub allowed: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ScanResult {
    pub bus: u8,
    /// Addresses 0x03 to 0x77 that acknowledged, lowest first.
    pub devices: Vec<FoundDevice>,
}

pub struct ScanBus;

impl Tool for ScanBus {
    type Input = ScanArguments;
    type Output = ScanResult;
    const SPEC: ToolSpec = ToolSpec { blocking: false, ..read_only_spec(
        "i2c.scan_bus",
        "Scan an I2C bus",
        "The device addresses that answer on an I2C bus (which must be on i2c.buses), and for each whether i2c.read and i2c.write may use it.",
    ) };

    async fn call(cx: Cx, args: ScanArguments) -> Result<ScanResult, ToolError> {
        let rule = cx.app.config.i2c.check_bus(args.bus)?;
        let mut addresses = match cx.app.agent.call(Request::I2cScan { bus: args.bus }).await? {
            Response::Addresses { addresses } => addresses,
            other => return Err(unexpected("i2c_scan", &other)),
        };
        addresses.sort_unstable();
        let devices = addresses
            .into_iter()
            .map(|address| FoundDevice {
                address,
                address_hex: format!("{address:#04x}"),
                allowed: rule.addresses.contains(&address),
            })
            .collect();
        Ok(ScanResult { bus: args.bus, devices })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArguments {
    /// I2C bus number; must be on i2c.buses.
    pub bus: u8,
    /// 7-bit device address as an integer, 3 to 119 (0x03 to 0x77); must be on the bus's addresses.
    #[schemars(range(min = 3, max = 119))]
    pub address: u8,
    /// Register to read from, 0 to 255, written to the device before reading; leave out to read
    /// from wherever the device's pointer is.
    #[serde(default)]
    pub register: Option<u8>,
    /// How many bytes to read, 1 to 256.
    #[schemars(range(min = 1, max = 256))]
    pub length: u16,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadResult {
    pub bus: u8,
    pub address: u8,
    pub register: Option<u8>,
    /// The bytes read as lowercase hex without separators, e.g. `0a1bff`.
    pub hex: String,
    /// The bytes read, as integers 0 to 255.
    pub bytes: Vec<u8>,
}

pub struct Read;

impl Tool for Read {
    type Input = ReadArguments;
    type Output = ReadResult;
    // A read changes no configuration, so it is read-only to a client; it is not idempotent
    // because many devices act on reads: FIFOs advance, status and interrupt flags clear.
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        idempotent: false,
        ..read_only_spec(
            "i2c.read",
            "Read from an I2C device",
            "Reads 1 to 256 bytes from a device on an I2C bus, optionally from a register. The bus and address must be on i2c.buses. Some devices change state when read (FIFOs, interrupt flags), so reading twice may not return the same bytes.",
        )
    };

    async fn call(cx: Cx, args: ReadArguments) -> Result<ReadResult, ToolError> {
        check_length("length", usize::from(args.length), 1)?;
        check_device(&cx.app.config.i2c, args.bus, args.address)?;
        let request =
            Request::I2cRead { bus: args.bus, address: args.address, register: args.register, length: args.length };
        let bytes = match cx.app.agent.call(request).await? {
            Response::Bytes { data } => data,
            other => return Err(unexpected("i2c_read", &other)),
        };
        Ok(ReadResult { bus: args.bus, address: args.address, register: args.register, hex: hex(&bytes), bytes })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteArguments {
    /// I2C bus number; must be on i2c.buses.
    pub bus: u8,
    /// 7-bit device address as an integer, 3 to 119 (0x03 to 0x77); must be on the bus's addresses.
    #[schemars(range(min = 3, max = 119))]
    pub address: u8,
    /// Register to write to, 0 to 255, sent before the data; leave out to send the data alone.
    #[serde(default)]
    pub register: Option<u8>,
    /// The bytes to write, integers 0 to 255, at most 256. May be empty when a register is given
    /// (which then only sets the device's register pointer).
    #[schemars(length(max = 256))]
    pub data: Vec<u8>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WriteResult {
    pub bus: u8,
    pub address: u8,
    pub register: Option<u8>,
    /// How many bytes went to the device, as the agent counts them.
    pub bytes_written: u64,
}

/// Checks that a write sends something and no more than one transfer holds.
fn check_write(register: Option<u8>, data: &[u8]) -> Result<(), ToolError> {
    check_length("data", data.len(), 0)?;
    if register.is_none() && data.is_empty() {
        return Err(ToolError::invalid_argument("nothing to write: give `data`, a `register`, or both"));
    }
    Ok(())
}

pub struct Write;

impl Tool for Write {
    type Input = WriteArguments;
    type Output = WriteResult;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        read_only: false,
        idempotent: false,
        ..read_only_spec(
            "i2c.write",
            "Write to an I2C device",
            "Writes up to 256 bytes to a device on an I2C bus, optionally preceded by a register number. The bus and address must be on i2c.buses.",
        )
    };

    async fn call(cx: Cx, args: WriteArguments) -> Result<WriteResult, ToolError> {
        check_write(args.register, &args.data)?;
        check_device(&cx.app.config.i2c, args.bus, args.address)?;
        let request =
            Request::I2cWrite { bus: args.bus, address: args.address, register: args.register, data: args.data };
        let bytes_written = match cx.app.agent.call(request).await? {
            Response::Written { bytes } => bytes,
            other => return Err(unexpected("i2c_write", &other)),
        };
        Ok(WriteResult { bus: args.bus, address: args.address, register: args.register, bytes_written })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config() -> I2cConfig {
        serde_saphyr::from_str("buses:\n  - {bus: 1, addresses: [0x48, 0x76]}\n  - {bus: 3, addresses: []}\n").unwrap()
    }

    #[test]
    fn hex_is_lowercase_pairs_without_separators() {
        assert_eq!(hex(&[0x0a, 0x1b, 0xff, 0x00]), "0a1bff00");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn a_device_off_the_allowlist_is_refused_as_the_configuration_words_it() {
        assert!(check_device(&config(), 1, 0x48).is_ok());
        for (bus, address) in [(2, 0x48), (1, 0x50), (3, 0x50)] {
            let e = check_device(&config(), bus, address).unwrap_err();
            assert_eq!(e.code, "permission_denied");
            assert_eq!(e.message, config().check_device(bus, address).unwrap_err().message);
        }
    }

    #[test]
    fn reserved_addresses_are_invalid_before_the_allowlist_is_consulted() {
        for address in [0x00, 0x02, 0x78, 0x7f, 0xff] {
            let e = check_device(&config(), 9, address).unwrap_err();
            assert_eq!(e.code, "invalid_argument", "{address:#04x}");
            assert!(e.message.contains("0x03 to 0x77"));
        }
        assert!(check_device(&config(), 9, 0x03).unwrap_err().code == "permission_denied");
    }

    #[test]
    fn read_lengths_are_one_to_two_hundred_fifty_six() {
        assert!(check_length("length", 1, 1).is_ok());
        assert!(check_length("length", 256, 1).is_ok());
        assert!(check_length("length", 0, 1).is_err());
        assert!(check_length("length", 257, 1).unwrap_err().message.contains("outside 1 to 256"));
    }

    #[test]
    fn a_write_needs_data_or_a_register_and_at_most_256_bytes() {
        assert!(check_write(Some(0x10), &[]).is_ok());
        assert!(check_write(None, &[1, 2]).is_ok());
        assert!(check_write(None, &[]).unwrap_err().message.contains("nothing to write"));
        assert!(check_write(Some(1), &[0; 257]).is_err());
        assert!(check_write(Some(1), &[0; 256]).is_ok());
    }
}
