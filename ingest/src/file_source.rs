//! The file source: plain or gzip files, directories of them, and stdin, read as lines
//! with bounded memory (an over-long line is counted and cut, never buffered whole).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::IngestError;

/// One input named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Standard input (`-`).
    Stdin,
    /// A file (gzip detected by its magic bytes).
    File(PathBuf),
}

impl Input {
    /// Expands command-line arguments: `-` is stdin, a directory is every file below it
    /// (sorted, hidden files skipped), anything else a file.
    pub fn expand(args: &[PathBuf]) -> Result<Vec<Input>, IngestError> {
        let mut out = Vec::new();
        for a in args {
            if a.as_os_str() == "-" {
                out.push(Input::Stdin);
            } else if a.is_dir() {
                let mut files = Vec::new();
                walk(a, &mut files).map_err(|source| IngestError::Input {
                    path: a.clone(),
                    source,
                })?;
                files.sort();
                out.extend(files.into_iter().map(Input::File));
            } else if a.exists() {
                out.push(Input::File(a.clone()));
            } else {
                return Err(IngestError::Input {
                    path: a.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "no such file or directory"),
                });
            }
        }
        Ok(out)
    }

    /// Name used in `source_ref` and quarantine records.
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "-".into(),
            Input::File(p) => p.display().to_string(),
        }
    }

    /// Opens the input for reading lines.
    pub fn open(&self) -> Result<InputReader, IngestError> {
        let path = PathBuf::from(self.name());
        let raw: Box<dyn Read + Send> = match self {
            Input::Stdin => Box::new(io::stdin()),
            Input::File(p) => Box::new(File::open(p).map_err(|source| IngestError::Input {
                path: path.clone(),
                source,
            })?),
        };
        let mut buffered = BufReader::with_capacity(1 << 20, raw);
        let head = buffered.fill_buf().map_err(|source| IngestError::Input {
            path: path.clone(),
            source,
        })?;
        let reader: Box<dyn BufRead + Send> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(BufReader::with_capacity(
                1 << 20,
                MultiGzDecoder::new(buffered),
            ))
        } else {
            Box::new(buffered)
        };
        Ok(InputReader {
            reader,
            line_no: 0,
            offset: 0,
            path,
        })
    }
}

/// Every file below `dir`, hidden entries skipped. A directory reached twice (a symlink
/// loop, or two links to one directory) is read once.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut seen = std::collections::HashSet::new();
    walk_once(dir, out, &mut seen)
}

fn walk_once(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> io::Result<()> {
    if !seen.insert(std::fs::canonicalize(dir)?) {
        tracing::warn!(dir = %dir.display(), "directory already read (a symlink loop?); skipped");
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            walk_once(&path, out, seen)?
        } else {
            out.push(path)
        }
    }
    Ok(())
}

/// One line read by [`InputReader::next_line`].
#[derive(Debug, Clone, Copy)]
pub struct LineInfo {
    /// 1-based line number.
    pub line_no: u64,
    /// Byte offset of the line in the decompressed input.
    pub offset: u64,
    /// Full length of the line without its newline, even when only part was kept.
    pub len: u64,
}

/// Reads an input line by line.
pub struct InputReader {
    reader: Box<dyn BufRead + Send>,
    line_no: u64,
    offset: u64,
    path: PathBuf,
}

impl InputReader {
    /// Reads the next line into `buf` (without `\n` or `\r\n`), keeping at most `keep` bytes;
    /// `None` at end of input.
    pub fn next_line(
        &mut self,
        buf: &mut Vec<u8>,
        keep: usize,
    ) -> Result<Option<LineInfo>, IngestError> {
        buf.clear();
        self.append_line(buf, keep)
    }

    /// Appends the next line to `buf` (without `\n` or `\r\n`), keeping at most `keep`
    /// bytes of it, so a caller gathering lines copies each one once; `None` at end of input.
    pub fn append_line(
        &mut self,
        buf: &mut Vec<u8>,
        keep: usize,
    ) -> Result<Option<LineInfo>, IngestError> {
        let base = buf.len();
        let start = self.offset;
        let mut len: u64 = 0;
        let mut saw_any = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(IngestError::Input {
                        path: self.path.clone(),
                        source,
                    });
                }
            };
            if chunk.is_empty() {
                if !saw_any {
                    return Ok(None);
                }
                break;
            }
            saw_any = true;
            let (part, found_newline) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            let room = keep.saturating_sub(buf.len() - base);
            buf.extend_from_slice(&part[..part.len().min(room)]);
            len += part.len() as u64;
            let consumed = part.len() + usize::from(found_newline);
            self.reader.consume(consumed);
            self.offset += consumed as u64;
            if found_newline {
                break;
            }
        }
        self.line_no += 1;
        if buf.last() == Some(&b'\r') && len == (buf.len() - base) as u64 {
            buf.pop();
            len -= 1;
        }
        Ok(Some(LineInfo {
            line_no: self.line_no,
            offset: start,
            len,
        }))
    }

    /// Whether the input's next bytes start a JSON object or array (after a UTF-8 byte
    /// order mark and whitespace), as far as the read buffer shows.
    pub fn starts_json(&mut self) -> bool {
        let Ok(head) = self.reader.fill_buf() else {
            // The error comes again, with its context, from the read that follows.
            return false;
        };
        let head = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
        matches!(head.trim_ascii_start().first(), Some(b'{' | b'['))
    }

    /// Reads the rest of the input (for a pretty-printed document), up to `limit` bytes.
    pub fn read_rest(&mut self, buf: &mut Vec<u8>, limit: u64) -> Result<(), IngestError> {
        (&mut self.reader)
            .take(limit)
            .read_to_end(buf)
            .map_err(|source| IngestError::Input {
                path: self.path.clone(),
                source,
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_plain_and_gzip_lines_with_positions_and_cuts_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"first\r\n\nsecond line is long\nlast";
        std::fs::write(dir.path().join("a.log"), text).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text).unwrap();
        std::fs::write(dir.path().join("b.log.gz"), gz.finish().unwrap()).unwrap();
        let inputs = Input::expand(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(inputs.len(), 2);
        for input in inputs {
            let mut r = input.open().unwrap();
            let mut buf = Vec::new();
            let mut got = Vec::new();
            while let Some(info) = r.next_line(&mut buf, 8).unwrap() {
                got.push((
                    info.line_no,
                    info.offset,
                    info.len,
                    String::from_utf8(buf.clone()).unwrap(),
                ));
            }
            assert_eq!(
                got,
                vec![
                    (1, 0, 5, "first".into()),
                    (2, 7, 0, String::new()),
                    (3, 8, 19, "second l".into()),
                    (4, 28, 4, "last".into())
                ]
            );
        }
    }

    #[test]
    fn a_symlink_loop_is_read_once_not_forever() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("audit.log"), "{}\n").unwrap();
        std::os::unix::fs::symlink(dir.path(), sub.join("loop")).unwrap();
        std::os::unix::fs::symlink(&sub, dir.path().join("again")).unwrap();
        let inputs = Input::expand(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(inputs.len(), 1, "{inputs:?}");
    }

    #[test]
    fn missing_input_is_a_clear_error() {
        let e = Input::expand(&[PathBuf::from("/nonexistent/audit.log")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "reading /nonexistent/audit.log: no such file or directory"
        );
    }
}
