//! Serial buses: I2C, SPI and UART.

use super::PlatformError;

/// I2C access (7-bit addresses).
pub trait I2c: Send + Sync {
    /// Addresses 0x03 to 0x77 that acknowledge on `bus`.
    fn scan(&self, bus: u8) -> Result<Vec<u8>, PlatformError>;
    /// Reads `length` bytes, after writing `register` first when given.
    fn read(&self, bus: u8, address: u8, register: Option<u8>, length: usize) -> Result<Vec<u8>, PlatformError>;
    /// Writes `data`, preceded by `register` when given.
    fn write(&self, bus: u8, address: u8, register: Option<u8>, data: &[u8]) -> Result<(), PlatformError>;
}

/// SPI settings of one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpiSettings {
    pub bus: u8,
    pub chip_select: u8,
    /// SPI mode 0 to 3 (clock polarity and phase).
    pub mode: u8,
    pub speed_hz: u32,
}

/// SPI access: full-duplex transfers.
pub trait Spi: Send + Sync {
    /// Sends `data` and returns the bytes clocked in at the same time.
    fn transfer(&self, settings: SpiSettings, data: &[u8]) -> Result<Vec<u8>, PlatformError>;
}

/// UART access on named ports (`serial0`, `ttyAMA0`, ...; resolved under /dev).
pub trait Uart: Send + Sync {
    /// Reads up to `max_bytes`, waiting at most `timeout_ms` for the first byte.
    fn read(&self, port: &str, baud: u32, max_bytes: usize, timeout_ms: u64) -> Result<Vec<u8>, PlatformError>;
    /// Writes `data`; returns the number of bytes written.
    fn write(&self, port: &str, baud: u32, data: &[u8]) -> Result<usize, PlatformError>;
}
