//! Where encoded bytes go: [`ChannelWriter`] cuts what a blocking writer
//! (XLSX, Parquet, Arrow) writes into chunks for the body, compressing each
//! when the client asked for it.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::compress::{Encoding, Running};

/// Size of the chunks a blocking writer's output is cut into.
pub const CHUNK_BYTES: usize = 128 * 1024;

pub type ByteChunk = Result<Bytes, std::io::Error>;

/// A `Write` that sends [`CHUNK_BYTES`] chunks into a channel; fails
/// (stopping the writer) once the body is gone.
pub struct ChannelWriter {
    tx: mpsc::Sender<ByteChunk>,
    buffer: Vec<u8>,
    encoding: Option<Encoding>,
    running: Running,
    started: bool,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<ByteChunk>, encoding: Option<Encoding>) -> Self {
        Self {
            tx,
            buffer: Vec::with_capacity(CHUNK_BYTES),
            encoding,
            running: Running::default(),
            started: false,
        }
    }

    fn send_bytes(&mut self, bytes: Bytes) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.tx
            .blocking_send(Ok(bytes))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client left"))
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        match self.encoding {
            None => self.send_bytes(Bytes::from(data)),
            Some(encoding) => {
                if !self.started {
                    self.started = true;
                    self.send_bytes(encoding.header())?;
                }
                let compressed = encoding.compress(&data)?;
                self.running.add(&compressed);
                self.send_bytes(compressed.bytes)
            }
        }
    }

    /// Sends what is buffered and, when compressing, the coding's trailer.
    /// The body is complete only after this.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.send()?;
        if let Some(encoding) = self.encoding {
            if !self.started {
                self.send_bytes(encoding.header())?;
            }
            let trailer = encoding.trailer(&self.running.crc, self.running.len);
            self.send_bytes(trailer)?;
        }
        Ok(())
    }

    /// Reports a failure into the body, so the download is aborted rather
    /// than ending cleanly.
    pub fn fail(&self, error: std::io::Error) {
        if self.tx.is_closed() {
            tracing::debug!("export stopped: the client left");
        } else {
            tracing::error!(%error, "export failed; aborting the download");
            let _ = self.tx.blocking_send(Err(error));
        }
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
