//! A body's points, read a bounded piece at a time.
//!
//! In: a body, as bytes already in memory or as a decoder (`io::Read`, e.g. gzip) of them,
//! in line protocol or v2. Out: [`Chunk`]s of points, each holding about as much memory as
//! its caller allows, then the verdict on the whole body ([`Reader::finish`]).
//!
//! Why: a parsed point costs far more memory than its bytes (a 6-byte `a v=1` line becomes
//! a ~200-byte [`Point`]), so a 49 KB gzip body of 32 MiB of tiny lines is over a gigabyte
//! when parsed whole. Read in chunks, a body costs its compressed bytes, a decode window
//! and one chunk of points, whatever is in it. The decode window only grows when one
//! record (a line, a v2 point) does not fit in it, and every byte it grows by is asked of
//! the caller first (the `reserve` argument), so the caller can count it in its budget.

use std::io::{self, Read};

use bytes::Bytes;

use super::keys::Noting;
use super::lineproto::Lines;
use super::text::{Text, TextBuilder};
use super::v2::{DecodeError, Entries};
use super::{ParseErrors, ParseOptions, Point};

/// How many decoded bytes a decoder source is read by at a time.
const READ_STEP: usize = 64 * 1024;

/// The text buffer a decoder source's chunk starts with (it grows as needed).
const TEXT_START: usize = 256 * 1024;

/// The wire format of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    LineProtocol,
    /// DataKit's v2 protobuf ([`super::v2`]).
    V2,
}

/// Where a body's bytes come from.
pub enum Source {
    /// The whole body, in memory (not copied: chunks are parsed from it in place).
    Bytes(Bytes),
    /// A decoder of the body (e.g. gzip), read [`READ_STEP`] bytes at a time.
    Read(Box<dyn Read + Send>),
}

/// Why a body could not be read to the end (its points are another matter: see
/// [`Reader::finish`]).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The decoder failed: not valid gzip, say.
    #[error("{0}")]
    Decode(io::Error),
    /// More than `max_decoded` bytes came out of the decoder.
    #[error("decoded body is over {max} bytes")]
    TooLarge { max: usize },
    /// The decode window had to grow and `reserve` said no.
    #[error("no memory budget left to decode the body")]
    NoRoom,
}

/// Why a body's points were refused.
#[derive(Debug, thiserror::Error)]
pub enum BadPoints {
    #[error(transparent)]
    Lines(ParseErrors),
    #[error(transparent)]
    V2(DecodeError),
}

enum Parser {
    Lines(Lines),
    V2(Entries),
}

/// Reads a body chunk by chunk; see the module doc.
pub struct Reader {
    parser: Parser,
    src: Source,
    /// For [`Source::Read`]: decoded bytes, of which `buf[start..]` are not parsed yet.
    /// For [`Source::Bytes`]: unused (`start` is the position in the body).
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    decoded: usize,
    max_decoded: usize,
    /// Bytes of `buf` the caller has agreed to (through `reserve`).
    reserved: usize,
    /// Keep line protocol as checked text, not as points ([`Reader::forwarding`]).
    forward: bool,
    /// What the text notes ([`Reader::noting`]).
    noting: Option<Noting>,
}

/// Points read from a body, in body order: parsed, or kept as checked line protocol text
/// ([`Reader::forwarding`]).
pub struct Chunk {
    pub points: Vec<Point>,
    /// With [`Reader::forwarding`] (line protocol only): the points as text; `points` is
    /// then empty.
    pub text: Option<Text>,
    /// Their [`Point::memory_size`] sum (or the text's [`Text::memory_size`]).
    pub memory: usize,
}

impl Chunk {
    /// The number of points.
    pub fn len(&self) -> usize {
        self.text.as_ref().map_or(self.points.len(), Text::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The points as a batch holds them: the text if kept, else the points.
    pub fn content(self) -> super::Content {
        match self.text {
            Some(t) => t.into(),
            None => self.points.into(),
        }
    }
}

impl Reader {
    /// A reader of `src` in `format`; a decoder may yield at most `max_decoded` bytes.
    pub fn new(src: Source, format: Format, opts: ParseOptions, max_decoded: usize) -> Reader {
        let parser = match format {
            Format::LineProtocol => Parser::Lines(Lines::new(opts)),
            Format::V2 => Parser::V2(Entries::new(opts)),
        };
        let eof = matches!(src, Source::Bytes(_));
        Reader {
            parser,
            src,
            buf: Vec::new(),
            start: 0,
            eof,
            decoded: 0,
            max_decoded,
            reserved: 0,
            forward: false,
            noting: None,
        }
    }

    /// Keeps line protocol as text ([`Chunk::text`]): every line is still checked as
    /// before, but only its text is kept, for a write whose bytes can go out as they came
    /// ([`super::text`]). No effect on v2 bodies.
    pub fn forwarding(mut self) -> Reader {
        self.forward = matches!(self.parser, Parser::Lines(_));
        self
    }

    /// With [`Reader::forwarding`]: the text notes what `noting` asks as it checks each
    /// line (what the sinkers asked of the last write: [`Text::key_places`] then needs no
    /// search, a column no line read again). `None` or empty: nothing is noted.
    pub fn noting(mut self, noting: Option<Noting>) -> Reader {
        self.noting = noting;
        self
    }

    /// The memory the decode window holds now (what `reserve` was asked for, in all).
    pub fn window(&self) -> usize {
        self.reserved
    }

    /// Whether every byte of the body has been parsed (or, for v2, a bad point ended it).
    pub fn is_done(&self) -> bool {
        if let Parser::V2(e) = &self.parser
            && e.failed()
        {
            return true;
        }
        self.eof
            && match &self.src {
                Source::Bytes(b) => self.start >= b.len(),
                Source::Read(_) => self.start >= self.buf.len(),
            }
    }

    /// Whether some record was bad: the body will be refused, and no more points are kept.
    pub fn failed(&self) -> bool {
        match &self.parser {
            Parser::Lines(l) => l.failed(),
            Parser::V2(e) => e.failed(),
        }
    }

    /// The next points, holding at least `max_memory` bytes unless the body ends first
    /// (the last point may go past it by its own size); an empty chunk once the body is
    /// done. `reserve(n)` is asked before the decode window grows by `n` bytes.
    pub fn next_chunk(
        &mut self,
        max_memory: usize,
        reserve: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Chunk, ReadError> {
        let mut points = Vec::new();
        let mut text = self.forward.then(|| {
            // About the input's size (lines are kept as written), up to the memory asked.
            let input = match &self.src {
                Source::Bytes(b) => b.len() - self.start,
                Source::Read(_) => TEXT_START,
            };
            TextBuilder::with_capacity((input + input / 16).min(max_memory))
                .noting(self.noting.clone())
        });
        let mut memory = 0;
        while memory < max_memory && !self.is_done() {
            let (input, last) = match &self.src {
                Source::Bytes(b) => (&b[self.start..], true),
                Source::Read(_) => (&self.buf[self.start..], self.eof),
            };
            let (consumed, added) = match &mut self.parser {
                Parser::Lines(l) => {
                    // Only whole lines, unless the body ends here.
                    let whole = if last {
                        input.len()
                    } else {
                        input.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
                    };
                    l.parse_some(
                        &input[..whole],
                        last,
                        max_memory - memory,
                        &mut points,
                        text.as_mut(),
                    )
                }
                Parser::V2(e) => e.decode_some(input, last, max_memory - memory, &mut points),
            };
            self.start += consumed;
            memory += added;
            if consumed == 0 && !self.is_done() {
                self.fill(reserve)?;
            }
        }
        if self.failed() {
            points = Vec::new();
            text = text.map(|_| TextBuilder::default());
            memory = 0;
        }
        let text = text.map(TextBuilder::finish);
        if let Some(t) = &text {
            memory = t.memory_size();
        }
        Ok(Chunk {
            points,
            text,
            memory,
        })
    }

    /// Reads the next step of a decoder into the window, first moving what is left to its
    /// front (so the window grows only when one record is larger than it).
    fn fill(&mut self, reserve: &mut dyn FnMut(usize) -> bool) -> Result<(), ReadError> {
        let Source::Read(r) = &mut self.src else {
            unreachable!("a body in memory is read whole")
        };
        self.buf.drain(..self.start);
        self.start = 0;
        let want = self.buf.len() + READ_STEP;
        if want > self.reserved {
            if !reserve(want - self.reserved) {
                return Err(ReadError::NoRoom);
            }
            self.buf.reserve_exact(want - self.buf.len());
            self.reserved = want;
        }
        let len = self.buf.len();
        self.buf.resize(want, 0);
        let n = loop {
            match r.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(ReadError::Decode(e));
                }
            }
        };
        self.buf.truncate(len + n);
        self.decoded += n;
        if self.decoded > self.max_decoded {
            return Err(ReadError::TooLarge {
                max: self.max_decoded,
            });
        }
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// The verdict on the whole body: call it once [`Reader::is_done`].
    pub fn finish(self) -> Result<(), BadPoints> {
        match self.parser {
            Parser::Lines(l) => l.finish().map_err(BadPoints::Lines),
            Parser::V2(e) => e.finish().map_err(BadPoints::V2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn opts() -> ParseOptions {
        ParseOptions {
            default_time: 7,
            ..ParseOptions::default()
        }
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn gunzip_source(b: Vec<u8>) -> Source {
        Source::Read(Box::new(flate2::read::MultiGzDecoder::new(
            io::Cursor::new(b),
        )))
    }

    /// Reads all chunks; returns the points, the largest chunk's memory, and the verdict.
    fn read_all(mut r: Reader, max: usize) -> (Vec<Point>, usize, Result<(), BadPoints>) {
        let mut all = Vec::new();
        let mut largest = 0;
        let mut free = |_| true;
        while !r.is_done() {
            let c = r.next_chunk(max, &mut free).unwrap();
            largest = largest.max(c.memory);
            all.extend(c.points);
        }
        (all, largest, r.finish())
    }

    fn body(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("m,host=h{} v={i}i,s=\"x{i}\"\n", i % 7))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn chunks_hold_about_the_memory_asked_and_the_points_are_those_of_a_whole_parse() {
        let b = body(5000);
        let whole = crate::point::parse(&b, opts()).unwrap();
        let one = whole[0].memory_size();
        for src in [
            Source::Bytes(Bytes::from(b.clone())),
            gunzip_source(gzip(&b)),
        ] {
            let r = Reader::new(src, Format::LineProtocol, opts(), usize::MAX);
            let (points, largest, verdict) = read_all(r, 20 * one);
            verdict.unwrap();
            assert_eq!(points, whole);
            assert!(largest >= 20 * one && largest < 21 * one, "{largest}");
        }
    }

    /// Reads all chunks of a forwarding reader; returns the text of each chunk.
    fn read_text(mut r: Reader, max: usize) -> (Vec<crate::point::Text>, Result<(), BadPoints>) {
        let mut all = Vec::new();
        let mut free = |_| true;
        while !r.is_done() {
            let c = r.next_chunk(max, &mut free).unwrap();
            assert!(c.points.is_empty());
            let t = c.text.expect("a forwarding reader keeps text");
            assert_eq!(c.memory, t.memory_size());
            all.push(t);
        }
        (all, r.finish())
    }

    /// Kept text is each line from its measurement to the end of its fields, as written,
    /// then its timestamp in nanoseconds: stamped where it had none, scaled from the
    /// precision, and it parses back to exactly the points a plain parse gives.
    #[test]
    fn forwarded_text_is_the_lines_as_written_with_their_timestamps_in_nanoseconds() {
        let body = "  cpu,host=a  v=1.50,ok=T,s=\"a b\\\"c\"   17  \r\n\
                    # comment\n\n\
                    mem,host=b\\ c used=3i\n\
                    disk free=2u 18\n";
        let opts = ParseOptions {
            precision: crate::point::Precision::Seconds,
            default_time: 7,
        };
        let whole = crate::point::parse(body.as_bytes(), opts).unwrap();
        for src in [
            Source::Bytes(Bytes::from(body)),
            gunzip_source(gzip(body.as_bytes())),
        ] {
            let r = Reader::new(src, Format::LineProtocol, opts, usize::MAX).forwarding();
            let (texts, verdict) = read_text(r, usize::MAX);
            verdict.unwrap();
            assert_eq!(texts.len(), 1);
            assert_eq!(
                std::str::from_utf8(&texts[0].joined()).unwrap(),
                "cpu,host=a  v=1.50,ok=T,s=\"a b\\\"c\" 17000000000\n\
                 mem,host=b\\ c used=3i 7\n\
                 disk free=2u 18000000000"
            );
            assert_eq!(texts[0].len(), 3);
            assert_eq!(texts[0].to_points(), whole);
        }
    }

    /// Chunks of text cut where the memory asked is reached, and together they are the
    /// encoding of the whole parse; a bad line keeps nothing, as for points.
    #[test]
    fn forwarded_chunks_hold_about_the_memory_asked_and_a_bad_line_keeps_none() {
        let b = body(5000);
        let whole = crate::point::parse(&b, opts()).unwrap();
        for src in [
            Source::Bytes(Bytes::from(b.clone())),
            gunzip_source(gzip(&b)),
        ] {
            let r = Reader::new(src, Format::LineProtocol, opts(), usize::MAX).forwarding();
            let (texts, verdict) = read_text(r, 10_000);
            verdict.unwrap();
            assert!(texts.len() > 5, "{}", texts.len());
            // Past the memory asked by less than a line (and the text's own struct).
            for t in &texts[..texts.len() - 1] {
                let m = t.memory_size();
                assert!((10_000..10_128).contains(&m), "{m}");
            }
            let points: Vec<Point> = texts.iter().flat_map(|t| t.to_points()).collect();
            assert_eq!(points, whole);
            let mut encoded = Vec::new();
            crate::point::encode_points(&whole, &mut encoded);
            let joined: Vec<u8> = texts
                .iter()
                .map(|t| t.joined().to_vec())
                .collect::<Vec<_>>()
                .join(&b'\n');
            assert_eq!(joined, encoded);
        }
        let mut bad = b.clone();
        bad.extend_from_slice(b"bad line\n");
        let r = Reader::new(
            Source::Bytes(Bytes::from(bad)),
            Format::LineProtocol,
            opts(),
            usize::MAX,
        )
        .forwarding();
        let (texts, verdict) = read_text(r, usize::MAX);
        assert!(texts.iter().all(|t| t.is_empty()));
        let Err(BadPoints::Lines(e)) = verdict else {
            panic!("the bad line refuses the body")
        };
        assert_eq!(e.errors[0].line, 5001);
    }

    #[test]
    fn a_bad_line_far_into_a_gzip_body_is_named_with_its_line_number_and_no_point_is_kept() {
        let mut b = body(3000);
        b.extend_from_slice(b"bad line here\n");
        b.extend(body(10));
        let mut r = Reader::new(
            gunzip_source(gzip(&b)),
            Format::LineProtocol,
            opts(),
            usize::MAX,
        );
        let mut free = |_| true;
        let first = r.next_chunk(1000, &mut free).unwrap();
        assert!(
            !first.points.is_empty(),
            "the first chunk is before the bad line"
        );
        while !r.is_done() {
            assert!(r.next_chunk(1000, &mut free).unwrap().points.is_empty() || !r.failed());
        }
        match r.finish() {
            Err(BadPoints::Lines(e)) => {
                assert_eq!(e.total, 1);
                assert_eq!(e.errors[0].line, 3001);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_decode_window_grows_only_through_reserve_and_a_refusal_stops_the_read() {
        // One line longer than a read step: the window must grow past it.
        let long = format!("m s=\"{}\"\n", "x".repeat(3 * READ_STEP));
        let b = gzip(long.as_bytes());
        let mut asked = 0;
        let mut r = Reader::new(
            gunzip_source(b.clone()),
            Format::LineProtocol,
            opts(),
            usize::MAX,
        );
        let mut count = |n| {
            asked += n;
            true
        };
        let c = r.next_chunk(usize::MAX, &mut count).unwrap();
        assert_eq!(c.points.len(), 1);
        assert!(asked > 3 * READ_STEP, "{asked}");
        assert_eq!(r.window(), asked);

        let mut r = Reader::new(gunzip_source(b), Format::LineProtocol, opts(), usize::MAX);
        let mut budget = 2 * READ_STEP;
        let mut limited = |n: usize| {
            if n > budget {
                return false;
            }
            budget -= n;
            true
        };
        assert!(matches!(
            r.next_chunk(usize::MAX, &mut limited),
            Err(ReadError::NoRoom)
        ));
    }

    #[test]
    fn a_decoder_yielding_more_than_the_limit_is_stopped() {
        let b = gzip(&vec![b'\n'; 10 * READ_STEP]);
        let mut r = Reader::new(
            gunzip_source(b),
            Format::LineProtocol,
            opts(),
            3 * READ_STEP,
        );
        let mut free = |_| true;
        let err = loop {
            match r.next_chunk(usize::MAX, &mut free) {
                Ok(_) => assert!(!r.is_done(), "read past the limit"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, ReadError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn v2_bodies_read_in_chunks_give_the_points_of_a_whole_decode() {
        let lp = body(2000);
        let points = crate::point::parse(&lp, opts()).unwrap();
        let pb = crate::point::v2::encode(&points);
        let one = points[0].memory_size();
        for src in [
            Source::Bytes(Bytes::from(pb.clone())),
            gunzip_source(gzip(&pb)),
        ] {
            let r = Reader::new(src, Format::V2, opts(), usize::MAX);
            let (got, largest, verdict) = read_all(r, 50 * one);
            verdict.unwrap();
            assert_eq!(got, points);
            assert!(largest < 51 * one);
        }
        // Cut inside the last point: refused whole, as a whole decode refuses it.
        let cut = &pb[..pb.len() - 3];
        let r = Reader::new(gunzip_source(gzip(cut)), Format::V2, opts(), usize::MAX);
        let (got, _, verdict) = read_all(r, 50 * one);
        assert!(got.len() < points.len());
        assert!(matches!(
            verdict,
            Err(BadPoints::V2(DecodeError::Protobuf(_)))
        ));
        assert!(crate::point::v2::decode(cut, opts()).is_err());
    }
}
