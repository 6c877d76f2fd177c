//! Checkpoints as safetensors files with PyTorch's state_dict names, written
//! atomically (temporary file, fsync, rename, fsync of the folder) so a
//! crash never leaves half a file. Two saves of the same tensors and
//! metadata are the same bytes. Loading also reads PyTorch's own
//! `torch.save` files (`.pt`, `.pth`), and reads only regular files.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cinder_tensor::runtime::{DType, Effect, Node};
use cinder_tensor::{Error, Result, Tensor};
use safetensors::tensor::{Dtype, TensorView};

use crate::module::Module;

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::I32 => Dtype::I32,
        DType::U32 => Dtype::U32,
    }
}

/// How the temporary files of [`write_atomic`] end: `.<name>.<pid>-<n>.cinder-tmp`
/// next to the file `<name>` they will replace. One that outlives its
/// process was left by a run that was killed between writing and renaming;
/// [`remove_stale_temp_files`] cleans them.
pub const TEMP_SUFFIX: &str = ".cinder-tmp";

/// Writes `bytes` to `path` so that readers see the old file or the new one,
/// never a mix: a temporary file in the same folder is written, synced and
/// renamed over `path`, then the folder is synced so the rename survives a
/// power cut. On any error the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    // The process id and a counter keep two writers of one file apart.
    let tmp = dir.join(format!(
        ".{name}.{}-{}{TEMP_SUFFIX}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(&dir).map_err(|e| Error::io(&dir, e))
}

/// Flushes a folder's entries (a rename in it) to disk. Where a folder
/// cannot be opened or synced (some file systems, other platforms), the
/// rename has still happened and this does nothing.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::io::ErrorKind;
        match File::open(dir).and_then(|d| d.sync_all()) {
            Err(e)
                if !matches!(
                    e.kind(),
                    ErrorKind::Unsupported | ErrorKind::InvalidInput | ErrorKind::PermissionDenied
                ) =>
            {
                Err(e)
            }
            _ => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Whether `name` is a temporary file of [`write_atomic`]:
/// `.<name>.<pid>-<n>.cinder-tmp`, or `.<name>.<pid>.tmp` as earlier
/// versions named them.
fn is_temp_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    if let Some(stem) = rest.strip_suffix(TEMP_SUFFIX) {
        return stem.rsplit_once('.').is_some_and(|(target, id)| {
            !target.is_empty()
                && id
                    .split_once('-')
                    .is_some_and(|(p, n)| digits(p) && digits(n))
        });
    }
    rest.strip_suffix(".tmp")
        .and_then(|stem| stem.rsplit_once('.'))
        .is_some_and(|(target, pid)| !target.is_empty() && digits(pid))
}

/// Removes the temporary files that [`write_atomic`] calls killed before
/// their rename left in `dir` (see [`TEMP_SUFFIX`]), and returns their
/// paths. Other files, and folders, are left alone; a folder that does not
/// exist has nothing to clean. Call it when a run that owns the folder
/// starts, not while another process may be writing there.
pub fn remove_stale_temp_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let is_file = entry
            .file_type()
            .map_err(|e| Error::io(&path, e))?
            .is_file();
        if is_file && entry.file_name().to_str().is_some_and(is_temp_name) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                // Removed meanwhile: nothing left to clean.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
    }
    Ok(removed)
}

/// What kind of thing a non-regular path is, for errors.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    "not a file"
}

/// Opens `path` for reading if it is a regular file (or a link to one) and
/// returns it with its length. A directory, FIFO, socket or device is
/// [`Error::BadFile`] naming the path, before it is opened: reading
/// `/dev/zero` never ends, and opening a FIFO waits for a writer. Every
/// file cinder reads (checkpoints, images) goes through this.
pub fn open_regular_file(path: impl AsRef<Path>) -> Result<(File, u64)> {
    let path = path.as_ref();
    let not_regular = |t: std::fs::FileType| {
        Error::bad_file(
            path,
            format!(
                "is {}, not a regular file; give the path of a file",
                kind_of(t)
            ),
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // The path may have been replaced between the two calls.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    Ok((file, meta.len()))
}

/// All of an opened regular file of `len` bytes, from its start.
fn read_all(path: &Path, file: &mut File, len: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.rewind()
        .and_then(|()| file.take(len).read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// A safetensors file's header length from its first 8 bytes, checked
/// against the file's length before anything that long is read.
fn header_len(path: &Path, first: &[u8], len: u64) -> Result<usize> {
    let Some(&n) = first.first_chunk::<8>() else {
        return Err(Error::bad_file(
            path,
            format!("not a safetensors file: {len} bytes, too short for a header"),
        ));
    };
    let n = u64::from_le_bytes(n);
    let after = len.saturating_sub(8);
    if n > after {
        return Err(Error::bad_file(
            path,
            format!(
                "not a safetensors file, or a truncated one: its first 8 bytes give a header \
                 of {n} bytes, but only {after} bytes follow"
            ),
        ));
    }
    usize::try_from(n).map_err(|_| Error::bad_file(path, "the header does not fit in memory"))
}

/// Saves named tensors; reads them back from the GPU in one submit.
pub fn save_tensors(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<()> {
    save_tensors_with_metadata(path, tensors, HashMap::new())
}

/// [`save_tensors`] plus string metadata in the file's header (safetensors'
/// `__metadata__`), such as a training run's epoch. The header lists the
/// metadata by key and the tensors by dtype, then name, so the same tensors
/// and metadata always give the same bytes.
pub fn save_tensors_with_metadata(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    meta: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut seen = std::collections::HashSet::new();
    for (name, _) in tensors {
        if !seen.insert(name) {
            return Err(Error::invalid(
                "save",
                format!("two tensors are named {name:?}"),
            ));
        }
    }
    let mut meta: BTreeMap<String, String> = meta.into_iter().collect();
    meta.insert("format".to_string(), "pt".to_string());
    let Some((_, first)) = tensors.first() else {
        return write_atomic(path, &serialize(Vec::new(), &meta)?);
    };
    let nodes: Vec<Node> = tensors.iter().map(|(_, t)| t.node().clone()).collect();
    let read: Vec<usize> = (0..nodes.len()).collect();
    let data = first.device().run(&nodes, &[], &read)?;
    let views = tensors
        .iter()
        .zip(&data)
        .map(|((name, t), bytes)| {
            TensorView::new(st_dtype(t.dtype()), t.shape().to_vec(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::bad_file(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    write_atomic(path, &serialize(views, &meta)?)
}

/// safetensors bytes whose header lists `meta` in key order. The
/// safetensors crate orders the tensors (by dtype, then name) but writes
/// metadata from a `HashMap`, whose order changes from run to run; so its
/// header is written without metadata and the sorted metadata spliced in.
fn serialize(views: Vec<(String, TensorView)>, meta: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let internal = |what: &str| Error::invalid("save", format!("internal: {what}"));
    let plain = safetensors::serialize(views, None)
        .map_err(|e| internal(&format!("safetensors could not serialize: {e}")))?;
    let n = plain
        .first_chunk::<8>()
        .and_then(|n| usize::try_from(u64::from_le_bytes(*n)).ok())
        .ok_or_else(|| internal("safetensors wrote no header length"))?;
    let (header, data) = plain
        .get(8..)
        .and_then(|rest| rest.split_at_checked(n))
        .ok_or_else(|| internal("safetensors' header length exceeds its output"))?;
    let tensors = std::str::from_utf8(header)
        .ok()
        .and_then(|h| h.trim_end().strip_prefix(JSON_OBJECT_START))
        .ok_or_else(|| internal("safetensors' header is not a JSON object"))?;
    let meta =
        serde_json::to_string(meta).map_err(|e| internal(&format!("metadata as JSON: {e}")))?;
    let mut header = format!("{JSON_OBJECT_START}\"__metadata__\":{meta}");
    if tensors != JSON_OBJECT_END {
        header.push(',');
    }
    header.push_str(tensors);
    // safetensors pads its header with spaces to keep the data 8-byte aligned.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    // What safetensors readers accept (its MAX_HEADER_SIZE).
    if header.len() > 100_000_000 {
        return Err(Error::invalid(
            "save",
            format!(
                "the metadata makes a {} byte header; safetensors readers accept 100 MB",
                header.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// Little-endian int64 values as int32 bytes, if every value fits.
fn narrow_i64(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for chunk in bytes.chunks_exact(8) {
        let v = i64::from_le_bytes(chunk.try_into().ok()?);
        out.extend_from_slice(&i32::try_from(v).ok()?.to_le_bytes());
    }
    Some(out)
}

/// Little-endian f64, f16 or bf16 values as f32 bytes (f64 rounds to
/// nearest; the half types convert exactly).
fn floats_to_f32(dtype: &FileDType, bytes: &[u8]) -> Vec<u8> {
    let convert = |chunk: &[u8]| -> f32 {
        match (dtype, chunk) {
            (FileDType::F64, &[a, b, c, d, e, f, g, h]) => {
                f64::from_le_bytes([a, b, c, d, e, f, g, h]) as f32
            }
            (FileDType::F16, &[a, b]) => half::f16::from_le_bytes([a, b]).to_f32(),
            (FileDType::BF16, &[a, b]) => half::bf16::from_le_bytes([a, b]).to_f32(),
            _ => f32::NAN,
        }
    };
    let width = if *dtype == FileDType::F64 { 8 } else { 2 };
    bytes
        .chunks_exact(width)
        .flat_map(|chunk| convert(chunk).to_le_bytes())
        .collect()
}

/// Saves a module's state_dict.
pub fn save(path: impl AsRef<Path>, module: &dyn Module) -> Result<()> {
    save_tensors(path, &module.state_dict())
}

/// Checks that every float tensor of `state` holds only finite values.
/// A run that diverged can save NaN or infinite weights; a model built from
/// them predicts nothing meaningful (every class "NaN%"), so loaders refuse
/// them. The error names each such tensor and how many bad values it holds
/// ("fc1.weight has 12 NaN values; fc2.bias has 1 infinite value"). The
/// tensors are read back from the device in one submit; integer tensors
/// (counters) are always finite and are skipped.
pub fn check_finite(state: &[(String, Tensor)]) -> Result<()> {
    let floats: Vec<&(String, Tensor)> = state
        .iter()
        .filter(|(_, t)| t.dtype() == DType::F32)
        .collect();
    let tensors: Vec<&Tensor> = floats.iter().map(|(_, t)| t).collect();
    let values = cinder_tensor::read_all(&tensors)?;
    let plural =
        |n: usize, what: &str| format!("{n} {what} value{}", if n == 1 { "" } else { "s" });
    let mut problems = Vec::new();
    for ((name, _), values) in floats.iter().zip(&values) {
        let nan = values.iter().filter(|v| v.is_nan()).count();
        let inf = values.iter().filter(|v| v.is_infinite()).count();
        match (nan, inf) {
            (0, 0) => {}
            (n, 0) => problems.push(format!("{name} has {}", plural(n, "NaN"))),
            (0, i) => problems.push(format!("{name} has {}", plural(i, "infinite"))),
            (n, i) => problems.push(format!(
                "{name} has {} and {}",
                plural(n, "NaN"),
                plural(i, "infinite")
            )),
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        "weights are not finite",
        format!(
            "{}; the run that wrote them diverged (retrain with a lower learning rate or \
             gradient clipping, or use an earlier checkpoint)",
            problems.join("; ")
        ),
    ))
}

/// Loads a state_dict into `module` in place. Every name must be present in
/// both with the same shape and dtype; otherwise nothing is changed and the
/// error lists each mismatch.
pub fn load(path: impl AsRef<Path>, module: &dyn Module) -> Result<()> {
    load_tensors(path, &module.state_dict()).map(|_| ())
}

/// A trained model from its weights file (a run's `model.safetensors`,
/// say), in evaluation mode: `build` makes the model its header describes,
/// then the file's weights are loaded into it and checked to be finite.
/// A training checkpoint is refused with a pointer to `weights_file`, the
/// file to pass instead; a header `build` rejects, or NaN weights, are
/// [`Error::BadFile`] naming the file.
pub fn load_trained<M: Module>(
    path: &Path,
    weights_file: &str,
    build: impl FnOnce(&HashMap<String, String>) -> Result<M>,
) -> Result<M> {
    let meta = read_metadata(path)?;
    if meta.contains_key("cinder.global_step") || meta.contains_key("cinder.optimizer_steps") {
        return Err(Error::bad_file(
            path,
            format!("a training checkpoint (for --resume); pass the {weights_file} next to it"),
        ));
    }
    let mut model = build(&meta).map_err(|e| match e {
        Error::BadFile { .. } => e,
        other => Error::bad_file(path, other.to_string()),
    })?;
    load_tensors(path, &model.state_dict())?;
    check_finite(&model.state_dict()).map_err(|e| Error::bad_file(path, e.to_string()))?;
    model.eval();
    Ok(model)
}

/// The string metadata in a safetensors file's header, without its tensors:
/// reads the header only, after checking its length against the file's,
/// and checks that the tensors it describes fill the rest of the file.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    let bad = |reason: String| Error::bad_file(path, reason);
    let (mut file, len) = open_regular_file(path)?;
    let mut first = Vec::with_capacity(8);
    (&mut file)
        .take(8)
        .read_to_end(&mut first)
        .map_err(|e| Error::io(path, e))?;
    let n = header_len(path, &first, len)?;
    let mut header = vec![0; n];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let entries: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| {
            bad(format!(
                "not a safetensors file: its header is not a JSON object: {e}"
            ))
        })?;
    let mut metadata = HashMap::new();
    let mut end = 0u64;
    for (key, value) in entries {
        if key == "__metadata__" {
            let serde_json::Value::Object(values) = value else {
                return Err(bad(
                    "not a safetensors file: __metadata__ is not an object".into()
                ));
            };
            for (k, v) in values {
                let serde_json::Value::String(v) = v else {
                    return Err(bad(format!("metadata {k:?} is not a string")));
                };
                metadata.insert(k, v);
            }
            continue;
        }
        let stop = value
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.get(1))
            .and_then(|o| o.as_u64())
            .ok_or_else(|| {
                bad(format!(
                    "not a safetensors file: tensor {key:?} has no data_offsets"
                ))
            })?;
        end = end.max(stop);
    }
    // ok: header_len checked that 8 + n <= len.
    let data = len - 8 - n as u64;
    if end > data {
        return Err(bad(format!(
            "truncated: the header describes {end} bytes of tensor data, the file holds {data}"
        )));
    }
    if end < data {
        return Err(bad(format!(
            "not a safetensors file: {} bytes follow the tensors' data",
            data - end
        )));
    }
    Ok(metadata)
}

/// A tensor as a checkpoint file holds it: element type, shape and
/// contiguous little-endian bytes.
struct FileTensor {
    dtype: FileDType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
enum FileDType {
    F32,
    I32,
    U32,
    I64,
    F64,
    F16,
    BF16,
    /// Any other element type, by name (cinder has no use for it).
    Other(String),
}

impl std::fmt::Display for FileDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileDType::Other(name) => write!(f, "{name}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// The first and last characters of a JSON object (a safetensors header).
const JSON_OBJECT_START: char = '{';
const JSON_OBJECT_END: &str = "}";

/// Whether the file starting with these bytes is a `torch.save` file: a ZIP
/// archive (PyTorch 1.6 and later) or a bare pickle stream (older ones). A
/// safetensors file starts with its header's length (8 bytes, little-endian)
/// and then the header's `{`; that length's first byte can be 0x80, the
/// pickle's first byte, so the safetensors shape is checked first.
fn is_torch_save(head: &[u8]) -> bool {
    let safetensors = head.len() > 8 && head[8] == JSON_OBJECT_START as u8;
    !safetensors && (head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80))
}

/// Every tensor of a safetensors file, and its metadata.
fn read_safetensors(
    path: &Path,
    bytes: &[u8],
) -> Result<(HashMap<String, FileTensor>, HashMap<String, String>)> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::bad_file(path, format!("not a safetensors file: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::bad_file(path, format!("not a safetensors file: {e}")))?;
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                Dtype::F32 => FileDType::F32,
                Dtype::I32 => FileDType::I32,
                Dtype::U32 => FileDType::U32,
                Dtype::I64 => FileDType::I64,
                Dtype::F64 => FileDType::F64,
                Dtype::F16 => FileDType::F16,
                Dtype::BF16 => FileDType::BF16,
                other => FileDType::Other(format!("{other:?}")),
            };
            let tensor = FileTensor {
                dtype,
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            (name, tensor)
        })
        .collect();
    Ok((tensors, metadata))
}

/// Every tensor of a `torch.save` file, named by its path through the
/// saved dictionaries (`fc1.weight`; `model.fc1.weight` when the state_dict
/// was saved under a key). Read with the `pytorch-reader` crate, which
/// interprets only the pickle opcodes a checkpoint needs and runs no code.
fn read_torch_save(path: &Path) -> Result<HashMap<String, FileTensor>> {
    let reader = pytorch_reader::PytorchReader::new(path)
        .map_err(|e| Error::bad_file(path, format!("not a readable PyTorch file: {e}")))?;
    reader
        .into_tensors()
        .into_iter()
        .map(|(name, tensor)| {
            use pytorch_reader::DType as T;
            let dtype = match tensor.dtype() {
                T::F32 => FileDType::F32,
                T::I32 => FileDType::I32,
                T::U32 => FileDType::U32,
                T::I64 => FileDType::I64,
                T::F64 => FileDType::F64,
                T::F16 => FileDType::F16,
                T::BF16 => FileDType::BF16,
                other => FileDType::Other(format!("{other:?}")),
            };
            let mut data = tensor
                .read()
                .map_err(|e| Error::bad_file(path, format!("tensor {name}: {e}")))?;
            // The reader gives native-endian bytes; cinder's are little-endian.
            if cfg!(target_endian = "big") {
                for element in data.chunks_exact_mut(tensor.dtype().size()) {
                    element.reverse();
                }
            }
            let shape = tensor.shape().to_vec();
            Ok((name, FileTensor { dtype, shape, data }))
        })
        .collect()
}

/// A state_dict saved inside a dictionary (`{"model": sd, "epoch": 3}`,
/// `{"model": sd, "optimizer": opt}`) has its names prefixed by its key.
/// When no name in the file is wanted as it is, the tensors under the key
/// whose remaining names match the most wanted ones are taken, without the
/// key; the rest of the file (an optimizer's state) is left alone.
fn select_state_dict(
    tensors: HashMap<String, FileTensor>,
    wanted: &std::collections::HashSet<&str>,
) -> HashMap<String, FileTensor> {
    if tensors.keys().any(|name| wanted.contains(name.as_str())) {
        return tensors;
    }
    let mut matches: HashMap<&str, usize> = HashMap::new();
    for name in tensors.keys() {
        if let Some((key, rest)) = name.split_once('.') {
            *matches.entry(key).or_default() += usize::from(wanted.contains(rest));
        }
    }
    // Ties go to the alphabetically first key, so the choice is stable.
    let best = matches
        .into_iter()
        .filter(|&(_, count)| count > 0)
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(key, _)| format!("{key}."));
    let Some(prefix) = best else {
        return tensors;
    };
    tensors
        .into_iter()
        .filter_map(|(name, t)| name.strip_prefix(&prefix).map(|rest| (rest.to_string(), t)))
        .collect()
}

/// Loads the file's tensors into `targets` in place, by name, all or nothing
/// (see [`load`]); returns the file's metadata (none for a PyTorch file). The
/// file is a safetensors file or a `torch.save` state_dict, told apart by its
/// first bytes.
pub fn load_tensors(
    path: impl AsRef<Path>,
    targets: &[(String, Tensor)],
) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    let wanted: std::collections::HashSet<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
    let (mut opened, len) = open_regular_file(path)?;
    // The first bytes tell the formats apart.
    let mut head = Vec::with_capacity(16);
    (&mut opened)
        .take(16)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    let (file, metadata) = if is_torch_save(&head) {
        drop(opened);
        let tensors = select_state_dict(read_torch_save(path)?, &wanted);
        (tensors, HashMap::new())
    } else {
        header_len(path, &head, len)?;
        let bytes = read_all(path, &mut opened, len)?;
        read_safetensors(path, &bytes)?
    };
    let mut problems = Vec::new();
    let mut effects = Vec::new();
    let mut names: Vec<&String> = file.keys().collect();
    names.sort();
    for name in names {
        if !wanted.contains(name.as_str()) {
            problems.push(format!("unexpected tensor {name:?} in the file"));
        }
    }
    for (name, target) in targets {
        let Some(found) = file.get(name) else {
            problems.push(format!(
                "missing tensor {name:?} (shape {:?})",
                target.shape()
            ));
            continue;
        };
        let data = match (&found.dtype, target.dtype()) {
            (FileDType::F32, DType::F32)
            | (FileDType::I32, DType::I32)
            | (FileDType::U32, DType::U32) => found.data.clone(),
            // Weights saved in another float type are converted, as
            // PyTorch's load_state_dict copies them into the parameter's type.
            (FileDType::F64 | FileDType::F16 | FileDType::BF16, DType::F32) => {
                floats_to_f32(&found.dtype, &found.data)
            }
            // PyTorch keeps counters such as num_batches_tracked in int64.
            (FileDType::I64, DType::I32) => match narrow_i64(&found.data) {
                Some(d) => d,
                None => {
                    problems.push(format!("{name}: int64 values do not fit in int32"));
                    continue;
                }
            },
            (have, want) => {
                problems.push(format!(
                    "{name}: dtype {have} in the file, the model has {want:?}"
                ));
                continue;
            }
        };
        if found.shape != target.shape() {
            problems.push(format!(
                "{name}: shape {:?} in the file, the model has {:?}",
                found.shape,
                target.shape()
            ));
            continue;
        }
        let value = Node::from_bytes(target.device(), target.shape(), target.dtype(), data)?;
        effects.push(Effect::Assign {
            target: target.node().clone(),
            value,
        });
    }
    if !problems.is_empty() {
        return Err(Error::bad_file(
            path,
            format!("does not match the model: {}", problems.join("; ")),
        ));
    }
    let Some((_, first)) = targets.first() else {
        return Ok(metadata);
    };
    let nodes: Vec<Node> = targets.iter().map(|(_, t)| t.node().clone()).collect();
    first.device().realize(&nodes)?;
    first.device().run(&[], &effects, &[])?;
    Ok(metadata)
}
