//! MNIST's IDX file format, plain or gzip-compressed, and an MNIST loader.
//!
//! An IDX file is a 4-byte magic number — two zero bytes, an element-type code
//! (0x08 = unsigned byte) and the number of dimensions — then one big-endian u32 per
//! dimension, then the elements in row-major order. MNIST images are `0x00000803`
//! (`[n, rows, cols]` bytes), labels `0x00000801` (`[n]` bytes). Only unsigned-byte
//! files are supported, which covers MNIST, Fashion-MNIST and KMNIST.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cinder_tensor::{Error, Result};

use crate::dataset::{checked_product, InMemoryDataset, Split};
use crate::gzip::{gunzip, is_gzip};

/// Where the bundled MNIST subset comes from, for errors.
const BUNDLED: &str = "data/mnist-5k (embedded in cinder-data)";
const BUNDLED_TRAIN_IMAGES: &[u8] = include_bytes!("../data/mnist-5k/train-images-idx3-ubyte.gz");
const BUNDLED_TRAIN_LABELS: &[u8] = include_bytes!("../data/mnist-5k/train-labels-idx1-ubyte.gz");
const BUNDLED_TEST_IMAGES: &[u8] = include_bytes!("../data/mnist-5k/t10k-images-idx3-ubyte.gz");
const BUNDLED_TEST_LABELS: &[u8] = include_bytes!("../data/mnist-5k/t10k-labels-idx1-ubyte.gz");

/// Magic number of an unsigned-byte IDX file with one dimension (MNIST labels).
pub const IDX_U8_LABELS: u32 = 0x0000_0801;
/// Magic number of an unsigned-byte IDX file with three dimensions (MNIST images).
pub const IDX_U8_IMAGES: u32 = 0x0000_0803;

const TYPE_U8: u8 = 0x08;

/// The contents of an unsigned-byte IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header, outermost first.
    pub dims: Vec<usize>,
    /// `dims.iter().product()` elements, row-major.
    pub data: Vec<u8>,
}

impl IdxArray {
    /// The magic number this array has in a file: `0x000008NN` for `NN` dimensions.
    pub fn magic(&self) -> u32 {
        (u32::from(TYPE_U8) << 8) | self.dims.len().min(0xFF) as u32
    }
}

/// Reads an IDX file, decompressing it first if it is gzip (whatever its name).
/// A file that is truncated, has a wrong magic number or element type, or whose
/// length does not match its dimensions is reported as [`Error::BadFile`] naming
/// `path` and the problem.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_idx(&bytes, path)
}

/// Parses the bytes of an IDX file (plain or gzip). `path` only names the source in
/// errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if is_gzip(bytes) {
        let inner = gunzip(bytes, path)?;
        return parse_plain(&inner, path, " (after gzip decompression)");
    }
    parse_plain(bytes, path, "")
}

/// `context` is appended to every error reason, so that sizes quoted for a
/// compressed file are not mistaken for its size on disk.
fn parse_plain(bytes: &[u8], path: &Path, context: &str) -> Result<IdxArray> {
    let bad = |reason: String| Error::bad_file(path, format!("{reason}{context}"));
    let Some(&[zero0, zero1, type_code, ndims]) = bytes.first_chunk::<4>() else {
        return Err(bad(format!(
            "truncated IDX file: {} bytes, shorter than the 4-byte magic number",
            bytes.len()
        )));
    };
    let magic = u32::from_be_bytes([zero0, zero1, type_code, ndims]);
    if zero0 != 0 || zero1 != 0 {
        return Err(bad(format!(
            "wrong magic number 0x{magic:08X}: not an IDX file (IDX files start with two zero \
             bytes; MNIST images have 0x{IDX_U8_IMAGES:08X}, labels 0x{IDX_U8_LABELS:08X})"
        )));
    }
    if type_code != TYPE_U8 {
        let reason = match element_type_name(type_code) {
            Some(name) => format!(
                "element type 0x{type_code:02X} ({name}, magic 0x{magic:08X}) is not supported; \
                 only unsigned bytes (0x08, as in MNIST) are"
            ),
            None => format!(
                "wrong magic number 0x{magic:08X}: 0x{type_code:02X} is not an IDX element type"
            ),
        };
        return Err(bad(reason));
    }
    if ndims == 0 {
        return Err(bad(format!(
            "wrong magic number 0x{magic:08X}: an IDX file needs at least one dimension"
        )));
    }
    let ndims = usize::from(ndims);
    let header_len = 4 + 4 * ndims;
    let Some(dim_bytes) = bytes.get(4..header_len) else {
        return Err(bad(format!(
            "truncated IDX file: the magic number 0x{magic:08X} declares {ndims} dimensions, \
             a {header_len}-byte header, but the file has {} bytes",
            bytes.len()
        )));
    };
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| {
            // ok: chunks_exact(4) yields 4-byte slices only.
            let d = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            // u32 -> usize is lossless on every platform wgpu runs on (32/64-bit).
            d as usize
        })
        .collect();
    let shape = format_dims(&dims);
    let Some(expected) = checked_product(&dims) else {
        return Err(bad(format!(
            "dimensions {shape} overflow the address space"
        )));
    };
    // ok: the `get` above proved bytes.len() >= header_len.
    let data = &bytes[header_len..];
    if data.len() < expected {
        return Err(bad(format!(
            "truncated IDX file: dimensions {shape} need {expected} data bytes after the \
             {header_len}-byte header, found {}",
            data.len()
        )));
    }
    if data.len() > expected {
        return Err(bad(format!(
            "dimensions {shape} need {expected} data bytes after the {header_len}-byte header, \
             but {} follow: the header does not match the data",
            data.len()
        )));
    }
    Ok(IdxArray {
        dims,
        data: data.to_vec(),
    })
}

fn element_type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => return None,
    })
}

fn format_dims(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    parts.join("x")
}

/// Writes `data` (row-major, `dims.iter().product()` bytes) as an unsigned-byte IDX
/// file, gzip-compressed if `path` ends in `.gz`. Meant for tests and for
/// converting small datasets; it builds the whole file in memory.
pub fn write_idx(path: impl AsRef<Path>, dims: &[usize], data: &[u8]) -> Result<()> {
    const OP: &str = "write_idx";
    let path = path.as_ref();
    let ndims = u8::try_from(dims.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            Error::invalid(
                OP,
                format!("IDX needs 1 to 255 dimensions, got {}", dims.len()),
            )
        })?;
    if checked_product(dims) != Some(data.len()) {
        return Err(Error::invalid(
            OP,
            format!(
                "dimensions {} do not match {} data bytes",
                format_dims(dims),
                data.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    bytes.extend_from_slice(&[0, 0, TYPE_U8, ndims]);
    for &d in dims {
        let d = u32::try_from(d)
            .map_err(|_| Error::invalid(OP, format!("dimension {d} does not fit IDX's u32")))?;
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    if gz {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder
            .write_all(&bytes)
            .and_then(|()| encoder.finish())
            .and_then(|compressed| std::fs::write(path, compressed))
            .map_err(|e| Error::io(path, e))
    } else {
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }
}

/// The MNIST handwritten digits (LeCun, Cortes and Burges) read from IDX files.
///
/// [`Mnist::bundled`] is a 5000-image subset embedded in this crate (see
/// `data/README.md` for its source and licence). For the full set, put the
/// four files, as published, in one directory and [`Mnist::load`] it.
/// Fashion-MNIST and KMNIST use the same names and format.
#[derive(Debug, Clone, Copy)]
pub struct Mnist;

impl Mnist {
    pub const TRAIN_IMAGES: &'static str = "train-images-idx3-ubyte";
    pub const TRAIN_LABELS: &'static str = "train-labels-idx1-ubyte";
    pub const TEST_IMAGES: &'static str = "t10k-images-idx3-ubyte";
    pub const TEST_LABELS: &'static str = "t10k-labels-idx1-ubyte";
    pub const NUM_CLASSES: usize = 10;

    /// Loads the training set (`train-*`) and test set (`t10k-*`) from `dir`, each
    /// file as named in [`Mnist::TRAIN_IMAGES`] etc. or with `.gz` added. Pixels
    /// are scaled from 0..=255 to [0, 1]; each sample has shape `[1, rows, cols]`,
    /// `[1, 28, 28]` for MNIST.
    pub fn load(dir: impl AsRef<Path>) -> Result<Split> {
        let dir = dir.as_ref();
        let train = Self::load_pair(
            find(dir, Self::TRAIN_IMAGES, "MNIST training images")?,
            find(dir, Self::TRAIN_LABELS, "MNIST training labels")?,
        )?;
        let test = Self::load_pair(
            find(dir, Self::TEST_IMAGES, "MNIST test images")?,
            find(dir, Self::TEST_LABELS, "MNIST test labels")?,
        )?;
        Ok(Split { train, test })
    }

    /// The test set (`t10k-*`) alone from `dir`: what evaluation needs.
    pub fn load_test(dir: impl AsRef<Path>) -> Result<InMemoryDataset> {
        let dir = dir.as_ref();
        Self::load_pair(
            find(dir, Self::TEST_IMAGES, "MNIST test images")?,
            find(dir, Self::TEST_LABELS, "MNIST test labels")?,
        )
    }

    /// The 5000 real MNIST digits embedded in this crate (`data/mnist-5k`):
    /// 4000 for training (400 per class) and 1000 held out (100 per class),
    /// as `[1, 28, 28]` samples scaled to [0, 1]. No file or download needed.
    pub fn bundled() -> Result<Split> {
        let pair = |images: &[u8], labels: &[u8], what: &str| -> Result<InMemoryDataset> {
            let images_path = Path::new(BUNDLED).join(format!("{what}-images (embedded)"));
            let labels_path = Path::new(BUNDLED).join(format!("{what}-labels (embedded)"));
            Self::from_arrays(
                parse_idx(images, &images_path)?,
                parse_idx(labels, &labels_path)?,
                &images_path,
                &labels_path,
            )
        };
        Ok(Split {
            train: pair(BUNDLED_TRAIN_IMAGES, BUNDLED_TRAIN_LABELS, "train")?,
            test: pair(BUNDLED_TEST_IMAGES, BUNDLED_TEST_LABELS, "t10k")?,
        })
    }

    /// Loads one images file (`0x00000803`, `[n, rows, cols]`) and its labels file
    /// (`0x00000801`, `[n]`, values 0..=9) as a dataset of `[1, rows, cols]` samples
    /// scaled to [0, 1].
    pub fn load_pair(
        images: impl AsRef<Path>,
        labels: impl AsRef<Path>,
    ) -> Result<InMemoryDataset> {
        let (images_path, labels_path) = (images.as_ref(), labels.as_ref());
        Self::from_arrays(
            read_idx(images_path)?,
            read_idx(labels_path)?,
            images_path,
            labels_path,
        )
    }

    fn from_arrays(
        images: IdxArray,
        labels: IdxArray,
        images_path: &Path,
        labels_path: &Path,
    ) -> Result<InMemoryDataset> {
        let &[n, rows, cols] = images.dims.as_slice() else {
            return Err(Error::bad_file(
                images_path,
                format!(
                    "expected MNIST images (magic 0x{IDX_U8_IMAGES:08X}: dimensions [n, rows, cols]), \
                     found magic 0x{:08X} with dimensions {}",
                    images.magic(),
                    format_dims(&images.dims)
                ),
            ));
        };
        let &[num_labels] = labels.dims.as_slice() else {
            return Err(Error::bad_file(
                labels_path,
                format!(
                    "expected MNIST labels (magic 0x{IDX_U8_LABELS:08X}: dimensions [n]), \
                     found magic 0x{:08X} with dimensions {}",
                    labels.magic(),
                    format_dims(&labels.dims)
                ),
            ));
        };
        if num_labels != n {
            return Err(Error::bad_file(
                labels_path,
                format!(
                    "{num_labels} labels, but the images file {} holds {n} images",
                    images_path.display()
                ),
            ));
        }
        if let Some((index, &label)) = labels
            .data
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= Self::NUM_CLASSES)
        {
            return Err(Error::bad_file(
                labels_path,
                format!(
                    "label {label} at index {index} is outside 0..={}",
                    Self::NUM_CLASSES - 1
                ),
            ));
        }
        Ok(InMemoryDataset {
            features: images.data.iter().map(|&p| f32::from(p) / 255.0).collect(),
            feature_shape: vec![1, rows, cols],
            labels: labels.data.iter().map(|&l| i32::from(l)).collect(),
            num_classes: Self::NUM_CLASSES,
        })
    }
}

/// `dir/name`, else `dir/name.gz`; if neither exists the error says what was
/// expected where.
fn find(dir: &Path, name: &str, what: &str) -> Result<PathBuf> {
    let plain = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    for candidate in [&plain, &gz] {
        match std::fs::metadata(candidate) {
            Ok(_) => return Ok(candidate.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(candidate, e)),
        }
    }
    Err(Error::io(
        plain,
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{what} not found: expected {name} or {name}.gz in {}",
                dir.display()
            ),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_subset_is_4000_and_1000_balanced_images() -> TestResult {
        let split = Mnist::bundled()?;
        assert_eq!((split.train.len(), split.test.len()), (4000, 1000));
        assert_eq!(split.train.feature_shape, vec![1, 28, 28]);
        for (data, per_class) in [(&split.train, 400), (&split.test, 100)] {
            let mut counts = [0usize; 10];
            for &l in &data.labels {
                counts[l as usize] += 1;
            }
            assert_eq!(counts, [per_class; 10]);
        }
        // Real handwriting: ink in the middle, none in the corners, on average.
        let mean = |r: usize, c: usize| -> f32 {
            let px = 28 * r + c;
            split
                .train
                .features
                .iter()
                .skip(px)
                .step_by(784)
                .sum::<f32>()
                / 4000.0
        };
        assert!(mean(14, 14) > 0.3 && mean(0, 0) == 0.0);
        Ok(())
    }

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "cinder-data-test-{}-{name}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir"); // ok: test fixture; a failure fails the test
            TempDir(dir)
        }

        fn path(&self, file: &str) -> PathBuf {
            self.0.join(file)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Asserts a BadFile for `path` whose reason contains every one of `parts`.
    fn assert_bad_file(result: Result<impl std::fmt::Debug>, path: &Path, parts: &[&str]) {
        match result {
            Err(err @ Error::BadFile { .. }) => {
                let message = err.to_string();
                let Error::BadFile { path: p, reason } = err else {
                    unreachable!()
                };
                assert_eq!(p, path, "{message}");
                assert!(message.contains(&path.display().to_string()), "{message}");
                for part in parts {
                    assert!(reason.contains(part), "`{part}` missing from: {message}");
                }
            }
            other => panic!("expected BadFile for {}, got {other:?}", path.display()),
        }
    }

    fn images(n: usize, rows: usize, cols: usize) -> Vec<u8> {
        (0..n * rows * cols).map(|i| (i * 37 % 256) as u8).collect()
    }

    #[test]
    fn round_trip_plain() -> TestResult {
        let dir = TempDir::new("plain");
        let path = dir.path("imgs-idx3-ubyte");
        let data = images(5, 4, 3);
        write_idx(&path, &[5, 4, 3], &data)?;
        let raw = std::fs::read(&path)?;
        assert_eq!(&raw[..8], &[0, 0, 8, 3, 0, 0, 0, 5]);
        assert_eq!(raw.len(), 16 + 60);
        let array = read_idx(&path)?;
        assert_eq!(array.dims, [5, 4, 3]);
        assert_eq!(array.data, data);
        assert_eq!(array.magic(), IDX_U8_IMAGES);
        Ok(())
    }

    #[test]
    fn round_trip_gz() -> TestResult {
        let dir = TempDir::new("gz");
        let path = dir.path("labels-idx1-ubyte.gz");
        let data: Vec<u8> = (0..300).map(|i| (i % 10) as u8).collect();
        write_idx(&path, &[300], &data)?;
        let raw = std::fs::read(&path)?;
        assert!(is_gzip(&raw), "a .gz path is written compressed");
        let array = read_idx(&path)?;
        assert_eq!(array.dims, [300]);
        assert_eq!(array.data, data);
        assert_eq!(array.magic(), IDX_U8_LABELS);
        // Detection is by content: the same bytes under a plain name still parse.
        let renamed = dir.path("labels-idx1-ubyte");
        std::fs::write(&renamed, &raw)?;
        assert_eq!(read_idx(&renamed)?, array);
        Ok(())
    }

    #[test]
    fn truncated_files() -> TestResult {
        let dir = TempDir::new("truncated");
        let path = dir.path("t-idx3-ubyte");
        write_idx(&path, &[2, 3, 3], &images(2, 3, 3))?;
        let full = std::fs::read(&path)?;

        std::fs::write(&path, &full[..3])?;
        assert_bad_file(
            read_idx(&path),
            &path,
            &["truncated", "3 bytes", "magic number"],
        );

        std::fs::write(&path, &full[..10])?;
        assert_bad_file(
            read_idx(&path),
            &path,
            &[
                "truncated",
                "declares 3 dimensions",
                "16-byte header",
                "10 bytes",
            ],
        );

        std::fs::write(&path, &full[..full.len() - 1])?;
        assert_bad_file(
            read_idx(&path),
            &path,
            &[
                "truncated",
                "dimensions 2x3x3 need 18 data bytes",
                "found 17",
            ],
        );

        std::fs::write(&path, [])?;
        assert_bad_file(read_idx(&path), &path, &["truncated", "0 bytes"]);
        Ok(())
    }

    #[test]
    fn truncated_gz_file() -> TestResult {
        let dir = TempDir::new("truncated-gz");
        let path = dir.path("t-idx3-ubyte.gz");
        write_idx(&path, &[20, 8, 8], &images(20, 8, 8))?;
        let full = std::fs::read(&path)?;
        std::fs::write(&path, &full[..full.len() / 2])?;
        assert_bad_file(read_idx(&path), &path, &["not a valid gzip stream"]);
        Ok(())
    }

    #[test]
    fn wrong_magic() -> TestResult {
        let dir = TempDir::new("magic");
        let path = dir.path("notes.txt");
        std::fs::write(&path, b"hello world, not an IDX file")?;
        assert_bad_file(
            read_idx(&path),
            &path,
            &["wrong magic number 0x68656C6C", "not an IDX file"],
        );

        std::fs::write(&path, [0, 0, 0x42, 1, 0, 0, 0, 0])?;
        assert_bad_file(
            read_idx(&path),
            &path,
            &[
                "wrong magic number 0x00004201",
                "0x42 is not an IDX element type",
            ],
        );

        std::fs::write(&path, [0, 0, 8, 0])?;
        assert_bad_file(
            read_idx(&path),
            &path,
            &["wrong magic number 0x00000800", "at least one dimension"],
        );
        Ok(())
    }

    #[test]
    fn unsupported_element_type() -> TestResult {
        let dir = TempDir::new("dtype");
        let path = dir.path("floats-idx1");
        let mut bytes = vec![0, 0, 0x0D, 1, 0, 0, 0, 1];
        bytes.extend_from_slice(&1.5f32.to_be_bytes());
        std::fs::write(&path, bytes)?;
        assert_bad_file(
            read_idx(&path),
            &path,
            &["element type 0x0D (f32", "not supported", "unsigned bytes"],
        );
        Ok(())
    }

    #[test]
    fn dims_length_mismatch() -> TestResult {
        let dir = TempDir::new("mismatch");
        let path = dir.path("x-idx1-ubyte");
        std::fs::write(&path, [0, 0, 8, 1, 0, 0, 0, 2, 7, 7, 7])?;
        assert_bad_file(
            read_idx(&path),
            &path,
            &["dimensions 2 need 2 data bytes after the 8-byte header, but 3 follow"],
        );
        // Sizes inside a gz file are marked as decompressed sizes.
        let gz = dir.path("y-idx1-ubyte.gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&[0, 0, 8, 1, 0, 0, 0, 5, 1])?;
        std::fs::write(&gz, encoder.finish()?)?;
        assert_bad_file(
            read_idx(&gz),
            &gz,
            &["truncated", "found 1", "after gzip decompression"],
        );
        Ok(())
    }

    #[test]
    fn missing_file_is_io_error() {
        let dir = TempDir::new("missing");
        let path = dir.path("nothing-here");
        let err = read_idx(&path).unwrap_err();
        assert!(
            matches!(&err, Error::Io { path: p, .. } if *p == path),
            "{err}"
        );
    }

    #[test]
    fn write_idx_rejects_bad_arguments() {
        let dir = TempDir::new("write-bad");
        let path = dir.path("w");
        let err = write_idx(&path, &[2, 2], &[1, 2, 3]).unwrap_err();
        assert!(
            err.to_string()
                .contains("dimensions 2x2 do not match 3 data bytes"),
            "{err}"
        );
        let err = write_idx(&path, &[], &[]).unwrap_err();
        assert!(
            err.to_string().contains("1 to 255 dimensions, got 0"),
            "{err}"
        );
        assert!(!path.exists());
    }

    /// Writes an MNIST-style directory: training set plain, test set gzipped.
    fn write_mnist(dir: &TempDir, train: usize, test: usize) {
        let labels = |n: usize| (0..n).map(|i| (i % 10) as u8).collect::<Vec<u8>>();
        let mut pixels = images(train, 4, 3);
        pixels[0] = 255;
        let write = |path, dims: &[usize], data: &[u8]| {
            write_idx(path, dims, data).expect("write"); // ok: test fixture
        };
        write(dir.path(Mnist::TRAIN_IMAGES), &[train, 4, 3], &pixels);
        write(dir.path(Mnist::TRAIN_LABELS), &[train], &labels(train));
        let gz = |name: &str| dir.path(&format!("{name}.gz"));
        write(gz(Mnist::TEST_IMAGES), &[test, 4, 3], &images(test, 4, 3));
        write(gz(Mnist::TEST_LABELS), &[test], &labels(test));
    }

    #[test]
    fn mnist_load() -> TestResult {
        let dir = TempDir::new("mnist");
        write_mnist(&dir, 12, 5);
        let split = Mnist::load(&dir.0)?;
        assert_eq!(split.train.len(), 12);
        assert_eq!(split.test.len(), 5);
        assert_eq!(split.train.feature_shape, [1, 4, 3]);
        assert_eq!(split.test.feature_shape, [1, 4, 3]);
        assert_eq!(split.train.num_classes, 10);
        split.train.validate()?;
        split.test.validate()?;
        assert_eq!(split.train.features[0], 1.0);
        assert_eq!(split.train.features[1], 37.0 / 255.0);
        assert!(split
            .train
            .features
            .iter()
            .all(|&v| (0.0..=1.0).contains(&v)));
        assert_eq!(split.test.labels, [0, 1, 2, 3, 4]);
        assert_eq!(split.train.labels[11], 1);
        Ok(())
    }

    #[test]
    fn mnist_missing_file_says_what_and_where() -> TestResult {
        let dir = TempDir::new("mnist-missing");
        write_mnist(&dir, 3, 3);
        std::fs::remove_file(dir.path(&format!("{}.gz", Mnist::TEST_LABELS)))?;
        let err = Mnist::load(&dir.0).unwrap_err();
        let message = err.to_string();
        match &err {
            Error::Io { path, source } => {
                assert_eq!(*path, dir.path(Mnist::TEST_LABELS));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Io, got {other:?}"),
        }
        for part in [
            "MNIST test labels not found",
            "t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz",
            &dir.0.display().to_string(),
        ] {
            assert!(message.contains(part), "`{part}` missing from: {message}");
        }
        Ok(())
    }

    #[test]
    fn mnist_mismatched_counts() -> TestResult {
        let dir = TempDir::new("mnist-counts");
        write_mnist(&dir, 6, 2);
        let labels = dir.path(Mnist::TRAIN_LABELS);
        write_idx(&labels, &[5], &[0, 1, 2, 3, 4])?;
        let images = dir.path(Mnist::TRAIN_IMAGES);
        assert_bad_file(
            Mnist::load(&dir.0),
            &labels,
            &["5 labels", &images.display().to_string(), "holds 6 images"],
        );
        Ok(())
    }

    #[test]
    fn mnist_wrong_kind_of_file_and_bad_label() -> TestResult {
        let dir = TempDir::new("mnist-kind");
        write_mnist(&dir, 4, 2);
        let images = dir.path(Mnist::TRAIN_IMAGES);
        let labels = dir.path(Mnist::TRAIN_LABELS);
        // Labels and images swapped.
        assert_bad_file(
            Mnist::load_pair(&labels, &images),
            &labels,
            &[
                "expected MNIST images (magic 0x00000803",
                "found magic 0x00000801",
                "dimensions 4",
            ],
        );
        assert_bad_file(
            Mnist::load_pair(&images, &images),
            &images,
            &[
                "expected MNIST labels (magic 0x00000801",
                "found magic 0x00000803",
                "4x4x3",
            ],
        );
        write_idx(&labels, &[4], &[0, 1, 12, 3])?;
        assert_bad_file(
            Mnist::load_pair(&images, &labels),
            &labels,
            &["label 12 at index 2", "0..=9"],
        );
        Ok(())
    }
}
