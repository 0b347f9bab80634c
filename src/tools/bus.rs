//! `spi.*` and `uart.*`: raw transfers on SPI devices and serial ports.
//!
//! Both are experimental: a wrong byte sent to an unknown device can do anything, so they
//! stay hidden until an administrator enables them. The devices, ports, speeds and baud
//! rates allowed are listed under `spi.devices` and `uart.ports` and are checked here as
//! well as by the ops agent, so that a refusal names the key to change.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::i2c::hex;
use super::system::read_only_spec;
use super::{Cx, Maturity, Tool, ToolError, ToolSpec};
use crate::config::{Role, SpiDeviceRule};
use crate::ipc::{Request, Response};

/// The most bytes one SPI transfer, UART read or UART write moves.
const MAX_BYTES: usize = 4096;
/// The SPI clock used when the caller names none, unless the device allows less.
const DEFAULT_SPI_SPEED_HZ: u32 = 1_000_000;
/// The longest UART wait accepted.
const MAX_UART_TIMEOUT_MS: u32 = 10_000;
/// Time the agent's answer needs besides the UART wait itself, so that the server is still
/// waiting for the answer when it comes.
const ANSWER_MARGIN_MS: u64 = 500;

const EXPERIMENTAL_OPERATOR_SPEC: ToolSpec = ToolSpec {
    blocking: false,
    min_role: Role::Operator,
    maturity: Maturity::Experimental,
    read_only: false,
    idempotent: false,
    ..read_only_spec("", "", "")
};

fn unexpected(op: &str, response: &Response) -> ToolError {
    ToolError::internal(format!("unexpected answer from the ops agent to {op}: {}", response.kind()))
}

fn check_byte_count(what: &str, count: usize) -> Result<(), ToolError> {
    if (1..=MAX_BYTES).contains(&count) {
        Ok(())
    } else {
        Err(ToolError::invalid_argument(format!("argument `{what}`: {count} bytes is outside 1 to {MAX_BYTES}")))
    }
}

/// The clock for a transfer: the one asked for, which the device must allow, or the default.
fn spi_speed(device: &SpiDeviceRule, speed_hz: Option<u32>) -> Result<u32, ToolError> {
    match speed_hz {
        None => Ok(DEFAULT_SPI_SPEED_HZ.min(device.max_speed_hz)),
        Some(hz) => {
            device.check_speed(hz)?;
            Ok(hz)
        }
    }
}

fn check_spi_mode(mode: u8) -> Result<(), ToolError> {
    if mode <= 3 {
        Ok(())
    } else {
        Err(ToolError::invalid_argument(format!(
            "argument `mode`: SPI mode {mode} does not exist; use 0 to 3 (clock polarity and phase)"
        )))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferArguments {
    /// SPI bus number (0 for the header's SPI0); bus and chip select must be on spi.devices.
    pub bus: u8,
    /// Chip select line of the device on the bus (0 for CE0, 1 for CE1).
    pub chip_select: u8,
    /// Bytes to send, integers 0 to 255, 1 to 4096 of them; as many bytes are read back.
    #[schemars(length(min = 1, max = 4096))]
    pub data: Vec<u8>,
    /// Clock in Hz: at most the device's max_speed_hz on spi.devices. Default 1 MHz, or
    /// max_speed_hz if that is lower.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub speed_hz: Option<u32>,
    /// SPI mode 0 to 3 (clock polarity and phase); default 0.
    #[serde(default)]
    #[schemars(range(max = 3))]
    pub mode: u8,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TransferResult {
    pub bus: u8,
    pub chip_select: u8,
    pub mode: u8,
    /// The clock used, in Hz.
    pub speed_hz: u32,
    /// The bytes clocked in while sending, as lowercase hex without separators.
    pub hex: String,
    /// The bytes clocked in, as integers 0 to 255 (as many as were sent).
    pub bytes: Vec<u8>,
}

pub struct SpiTransfer;

impl Tool for SpiTransfer {
    type Input = TransferArguments;
    type Output = TransferResult;
    const SPEC: ToolSpec = ToolSpec {
        name: "spi.transfer",
        title: "SPI transfer",
        description: "Sends 1 to 4096 bytes to an SPI device and returns the bytes clocked in at the same time (full duplex). The bus and chip select must be on spi.devices, and the clock at most its max_speed_hz.",
        ..EXPERIMENTAL_OPERATOR_SPEC
    };

    async fn call(cx: Cx, args: TransferArguments) -> Result<TransferResult, ToolError> {
        check_byte_count("data", args.data.len())?;
        check_spi_mode(args.mode)?;
        let device = cx.app.config.spi.check_device(args.bus, args.chip_select)?;
        let speed_hz = spi_speed(device, args.speed_hz)?;
        let request = Request::SpiTransfer {
            bus: args.bus,
            chip_select: args.chip_select,
            mode: args.mode,
            speed_hz,
            data: args.data,
        };
        let bytes = match cx.app.agent.call(request).await? {
            Response::Bytes { data } => data,
            other => return Err(unexpected("spi_transfer", &other)),
        };
        Ok(TransferResult {
            bus: args.bus,
            chip_select: args.chip_select,
            mode: args.mode,
            speed_hz,
            hex: hex(&bytes),
            bytes,
        })
    }
}

/// Checks a UART wait: within the documented range, and short enough that the agent's
/// answer arrives before the server stops waiting for it (`ops_agent.request_timeout_ms`).
fn check_uart_timeout(timeout_ms: u32, request_timeout_ms: u64) -> Result<(), ToolError> {
    if timeout_ms > MAX_UART_TIMEOUT_MS {
        return Err(ToolError::invalid_argument(format!(
            "argument `timeout_ms`: {timeout_ms} is more than {MAX_UART_TIMEOUT_MS}"
        )));
    }
    let limit = request_timeout_ms.saturating_sub(ANSWER_MARGIN_MS);
    if u64::from(timeout_ms) > limit {
        return Err(ToolError::invalid_argument(format!(
            "argument `timeout_ms`: {timeout_ms} ms would outlast this server's wait for the ops agent \
             (ops_agent.request_timeout_ms is {request_timeout_ms}); use at most {limit}"
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UartReadArguments {
    /// Serial port name under /dev, e.g. `serial0` or `ttyAMA0`; must be on uart.ports.
    pub port: String,
    /// Baud rate; must be on the port's baud_rates under uart.ports.
    pub baud: u32,
    /// The most bytes to return, 1 to 4096 (default 256).
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_bytes: u32,
    /// How long to wait for the first byte, 0 to 10000 ms (default 1000). It must also be at
    /// least 500 ms below the server's ops_agent.request_timeout_ms (10000 unless changed).
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(max = 10000))]
    pub timeout_ms: u32,
}

fn default_max_bytes() -> u32 {
    256
}
fn default_timeout_ms() -> u32 {
    1000
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct UartReadResult {
    pub port: String,
    pub baud: u32,
    /// The bytes as text: UTF-8, with invalid sequences replaced by U+FFFD.
    pub text: String,
    /// The bytes as lowercase hex without separators.
    pub hex: String,
    /// The bytes, as integers 0 to 255; empty when nothing arrived in time.
    pub bytes: Vec<u8>,
}

pub struct UartRead;

impl Tool for UartRead {
    type Input = UartReadArguments;
    type Output = UartReadResult;
    const SPEC: ToolSpec = ToolSpec {
        name: "uart.read",
        title: "Read from a serial port",
        description: "Reads what arrives on a serial port, up to max_bytes, waiting at most timeout_ms for the first byte; returns it as text, hex and bytes. The port and baud rate must be on uart.ports. Reading consumes the bytes.",
        // As with i2c.read: nothing is configured or sent, but what is read is gone afterwards.
        read_only: true,
        ..EXPERIMENTAL_OPERATOR_SPEC
    };

    async fn call(cx: Cx, args: UartReadArguments) -> Result<UartReadResult, ToolError> {
        check_byte_count("max_bytes", args.max_bytes as usize)?;
        check_uart_timeout(args.timeout_ms, cx.app.config.ops_agent.request_timeout_ms)?;
        cx.app.config.uart.check_port(&args.port, args.baud)?;
        let request = Request::UartRead {
            port: args.port.clone(),
            baud: args.baud,
            max_bytes: args.max_bytes,
            timeout_ms: args.timeout_ms,
        };
        let bytes = match cx.app.agent.call(request).await? {
            Response::Bytes { data } => data,
            other => return Err(unexpected("uart_read", &other)),
        };
        Ok(UartReadResult {
            port: args.port,
            baud: args.baud,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            hex: hex(&bytes),
            bytes,
        })
    }
}

/// What to send on a serial port: a string (sent as UTF-8) or an array of byte values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UartData(pub Vec<u8>);

impl<'de> Deserialize<'de> for UartData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DataVisitor;

        impl<'de> Visitor<'de> for DataVisitor {
            type Value = UartData;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or an array of integers 0 to 255")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<UartData, E> {
                Ok(UartData(s.as_bytes().to_vec()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UartData, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BYTES));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Ok(UartData(bytes))
            }
        }

        d.deserialize_any(DataVisitor)
    }
}

impl JsonSchema for UartData {
    fn schema_name() -> Cow<'static, str> {
        "UartData".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "type": "string", "description": "Text, sent as UTF-8." },
                {
                    "type": "array",
                    "description": "Byte values.",
                    "items": { "type": "integer", "minimum": 0, "maximum": 255 },
                    "minItems": 1,
                    "maxItems": 4096
                }
            ]
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UartWriteArguments {
    /// Serial port name under /dev, e.g. `serial0` or `ttyAMA0`; must be on uart.ports.
    pub port: String,
    /// Baud rate; must be on the port's baud_rates under uart.ports.
    pub baud: u32,
    /// What to send: a string (sent as its UTF-8 bytes, so "\r\n" must be written out if the
    /// device wants it) or an array of byte values 0 to 255. 1 to 4096 bytes.
    pub data: UartData,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct UartWriteResult {
    pub port: String,
    pub baud: u32,
    /// How many bytes went out.
    pub bytes_written: u64,
}

pub struct UartWrite;

impl Tool for UartWrite {
    type Input = UartWriteArguments;
    type Output = UartWriteResult;
    const SPEC: ToolSpec = ToolSpec {
        name: "uart.write",
        title: "Write to a serial port",
        description: "Sends text (as UTF-8) or bytes on a serial port, 1 to 4096 bytes. The port and baud rate must be on uart.ports.",
        ..EXPERIMENTAL_OPERATOR_SPEC
    };

    async fn call(cx: Cx, args: UartWriteArguments) -> Result<UartWriteResult, ToolError> {
        check_byte_count("data", args.data.0.len())?;
        cx.app.config.uart.check_port(&args.port, args.baud)?;
        let request = Request::UartWrite { port: args.port.clone(), baud: args.baud, data: args.data.0 };
        let bytes_written = match cx.app.agent.call(request).await? {
            Response::Written { bytes } => bytes,
            other => return Err(unexpected("uart_write", &other)),
        };
        Ok(UartWriteResult { port: args.port, baud: args.baud, bytes_written })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spi() -> crate::config::SpiConfig {
        serde_saphyr::from_str(
            "devices:\n  - {bus: 0, chip_select: 0, max_speed_hz: 500000}\n  - {bus: 0, chip_select: 1, max_speed_hz: 8000000}\n",
        )
        .unwrap()
    }

    #[test]
    fn the_spi_clock_defaults_to_one_megahertz_or_the_device_limit_if_lower() {
        let spi = spi();
        let slow = spi.check_device(0, 0).unwrap();
        let fast = spi.check_device(0, 1).unwrap();
        assert_eq!(spi_speed(slow, None).unwrap(), 500_000);
        assert_eq!(spi_speed(fast, None).unwrap(), 1_000_000);
        assert_eq!(spi_speed(fast, Some(8_000_000)).unwrap(), 8_000_000);
        for hz in [8_000_001, 0] {
            let e = spi_speed(fast, Some(hz)).unwrap_err();
            assert_eq!(e.code, "invalid_argument", "{hz}");
            assert_eq!(e.message, fast.check_speed(hz).unwrap_err().message);
        }
    }

    #[test]
    fn spi_modes_are_zero_to_three() {
        assert!((0..=3).all(|m| check_spi_mode(m).is_ok()));
        assert!(check_spi_mode(4).is_err());
    }

    #[test]
    fn byte_counts_are_one_to_4096() {
        assert!(check_byte_count("data", 1).is_ok());
        assert!(check_byte_count("data", 4096).is_ok());
        assert!(check_byte_count("data", 0).is_err());
        assert!(check_byte_count("data", 4097).unwrap_err().message.contains("outside 1 to 4096"));
    }

    #[test]
    fn a_uart_wait_must_end_before_the_server_stops_waiting_for_the_agent() {
        assert!(check_uart_timeout(0, 10_000).is_ok());
        assert!(check_uart_timeout(9_500, 10_000).is_ok());
        assert!(check_uart_timeout(9_501, 10_000).unwrap_err().message.contains("use at most 9500"));
        assert!(check_uart_timeout(10_000, 30_000).is_ok());
        assert!(check_uart_timeout(10_001, 30_000).unwrap_err().message.contains("more than 10000"));
    }

    #[test]
    fn uart_data_is_a_string_sent_as_utf8_or_an_array_of_bytes() {
        let parse = |v: serde_json::Value| serde_json::from_value::<UartData>(v).map(|d| d.0);
        assert_eq!(parse(serde_json::json!("AT\r\n")).unwrap(), b"AT\r\n");
        assert_eq!(parse(serde_json::json!("é")).unwrap(), vec![0xc3, 0xa9]);
        assert_eq!(parse(serde_json::json!([0, 127, 255])).unwrap(), vec![0, 127, 255]);
        assert!(parse(serde_json::json!([256])).is_err());
        let e = parse(serde_json::json!(42)).unwrap_err().to_string();
        assert!(e.contains("a string, or an array of integers 0 to 255"), "{e}");
    }
}
