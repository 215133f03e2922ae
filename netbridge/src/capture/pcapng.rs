//! A minimal pcapng writer (draft-ietf-opsawg-pcapng): one section, an
//! Interface Description Block per port (named), Enhanced Packet Blocks with
//! the direction (epb_flags) and the datapath's verdict, drop reason and
//! NAT translation as the packet comment, Interface Statistics Blocks at
//! the end. Little-endian, nanosecond timestamps.
use std::io::{self, Write};

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const ISB: u32 = 5;
const EPB: u32 = 6;
const LINKTYPE_ETHERNET: u16 = 1;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
const ISB_IFRECV: u16 = 4;
const ISB_OSDROP: u16 = 7;

/// Packet direction (epb_flags bits 0-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Writes blocks to `W`; interfaces are numbered in the order added.
pub struct Writer<W: Write> {
    out: W,
    /// Packets written per interface.
    counts: Vec<u64>,
}

/// Appends option `code` with `value`, padded to 32 bits.
fn option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    // Option lengths are 16-bit: longer comments are cut.
    let value = &value[..value.len().min(0xfff0)];
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
    buf.extend_from_slice(value);
    pad(buf);
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl<W: Write> Writer<W> {
    /// Starts a section; `application` goes into shb_userappl.
    pub fn new(mut out: W, application: &str) -> io::Result<Self> {
        let mut body = Vec::new();
        body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&u64::MAX.to_le_bytes()); // section length unknown
        option(&mut body, SHB_USERAPPL, application.as_bytes());
        option(&mut body, OPT_END, &[]);
        block(&mut out, SHB, &body)?;
        Ok(Writer {
            out,
            counts: Vec::new(),
        })
    }

    /// Describes an Ethernet interface; returns its id.
    pub fn add_interface(
        &mut self,
        name: &str,
        description: &str,
        snaplen: u32,
    ) -> io::Result<u32> {
        let mut body = Vec::new();
        body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&snaplen.to_le_bytes());
        option(&mut body, IF_NAME, name.as_bytes());
        option(&mut body, IF_DESCRIPTION, description.as_bytes());
        option(&mut body, IF_TSRESOL, &[9]); // 10^-9 s
        option(&mut body, OPT_END, &[]);
        block(&mut self.out, IDB, &body)?;
        self.counts.push(0);
        Ok(self.counts.len() as u32 - 1)
    }

    /// Writes one packet seen on `iface` at `ts_ns` (ns since the epoch).
    pub fn packet(
        &mut self,
        iface: u32,
        ts_ns: u64,
        data: &[u8],
        orig_len: u32,
        dir: Direction,
        comment: &str,
    ) -> io::Result<()> {
        let mut body = Vec::with_capacity(data.len() + comment.len() + 48);
        body.extend_from_slice(&iface.to_le_bytes());
        body.extend_from_slice(&((ts_ns >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts_ns as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&orig_len.max(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        pad(&mut body);
        let flags: u32 = match dir {
            Direction::Inbound => 1,
            Direction::Outbound => 2,
        };
        option(&mut body, EPB_FLAGS, &flags.to_le_bytes());
        if !comment.is_empty() {
            option(&mut body, OPT_COMMENT, comment.as_bytes());
        }
        option(&mut body, OPT_END, &[]);
        block(&mut self.out, EPB, &body)?;
        if let Some(c) = self.counts.get_mut(iface as usize) {
            *c += 1;
        }
        Ok(())
    }

    /// Ends the capture: per interface, packets written; on interface 0
    /// also `lost` (events the datapath could not deliver) and `comment`.
    pub fn finish(mut self, ts_ns: u64, lost: u64, comment: &str) -> io::Result<W> {
        for (i, n) in self.counts.clone().into_iter().enumerate() {
            let mut body = Vec::new();
            body.extend_from_slice(&(i as u32).to_le_bytes());
            body.extend_from_slice(&((ts_ns >> 32) as u32).to_le_bytes());
            body.extend_from_slice(&(ts_ns as u32).to_le_bytes());
            option(&mut body, ISB_IFRECV, &n.to_le_bytes());
            if i == 0 {
                option(&mut body, ISB_OSDROP, &lost.to_le_bytes());
                option(&mut body, OPT_COMMENT, comment.as_bytes());
            }
            option(&mut body, OPT_END, &[]);
            block(&mut self.out, ISB, &body)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes a block: type, total length, body, total length again.
fn block<W: Write>(out: &mut W, kind: u32, body: &[u8]) -> io::Result<()> {
    debug_assert!(body.len().is_multiple_of(4));
    let total = (body.len() + 12) as u32;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&total.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// Walks the blocks: each is 32-bit aligned and its two length fields
    /// agree; returns the block types.
    fn blocks(b: &[u8]) -> Vec<u32> {
        let mut off = 0;
        let mut kinds = Vec::new();
        while off < b.len() {
            let (kind, len) = (u32_at(b, off), u32_at(b, off + 4) as usize);
            assert_eq!(len % 4, 0);
            assert_eq!(u32_at(b, off + len - 4) as usize, len);
            kinds.push(kind);
            off += len;
        }
        assert_eq!(off, b.len());
        kinds
    }

    #[test]
    fn blocks_are_well_formed() {
        let mut w = Writer::new(Vec::new(), "test").unwrap();
        let i = w.add_interface("nb-black", "port", 256).unwrap();
        w.packet(i, 1, &[1, 2, 3], 60, Direction::Inbound, "fwd nb-white")
            .unwrap();
        w.packet(i, 2, &[0; 8], 8, Direction::Outbound, "").unwrap();
        let out = w.finish(3, 5, "5 lost").unwrap();
        assert_eq!(blocks(&out), vec![SHB, IDB, EPB, EPB, ISB]);
    }
}
