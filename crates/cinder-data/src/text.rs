//! Text for character-level language models: a [`Corpus`] read from files
//! (by default the licence texts every Debian machine has), its [`Vocab`],
//! seeded windows of it ([`windows`]) or stretches read side by side with
//! the state carried ([`stream_starts`]) for training, and an
//! order-n character model as the baseline to beat ([`NGram`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cinder_tensor::{Error, Result};

use crate::transform::Rng;

/// Where [`Corpus::default_files`] looks.
pub const DEFAULT_TEXT_DIR: &str = "/usr/share/common-licenses";

/// The characters a model knows, each with an index; sorted, so the same
/// text always gives the same indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
    index: HashMap<char, u32>,
}

impl Vocab {
    /// Every distinct character of `text`.
    pub fn from_text(text: &str) -> Vocab {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocab::from_chars(chars)
    }

    fn from_chars(chars: Vec<char>) -> Vocab {
        let index = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        Vocab { chars, index }
    }

    /// The characters in index order, as one string (how a model file
    /// stores its vocabulary).
    pub fn as_string(&self) -> String {
        self.chars.iter().collect()
    }

    /// The inverse of [`Self::as_string`]; refuses repeated characters.
    pub fn from_string(chars: &str) -> Result<Vocab> {
        let vocab = Vocab::from_text(chars);
        if vocab.len() != chars.chars().count() {
            return Err(Error::invalid(
                "vocabulary",
                "a stored vocabulary repeats a character",
            ));
        }
        Ok(Vocab::from_chars(chars.chars().collect()))
    }

    pub fn len(&self) -> usize {
        self.chars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// Each character's index; a character the vocabulary lacks is an error
    /// that names it.
    pub fn encode(&self, text: &str) -> Result<Vec<i32>> {
        text.chars()
            .map(|c| {
                self.index.get(&c).map(|&i| i as i32).ok_or_else(|| {
                    Error::invalid(
                        "vocabulary",
                        format!("the character {c:?} is not in the model's vocabulary"),
                    )
                })
            })
            .collect()
    }

    /// The characters of `ids`; an index past the vocabulary is an error.
    pub fn decode(&self, ids: &[i32]) -> Result<String> {
        ids.iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.chars.get(i).copied())
                    .ok_or_else(|| {
                        Error::invalid(
                            "vocabulary",
                            format!("index {i} is past the vocabulary's {}", self.len()),
                        )
                    })
            })
            .collect()
    }
}

/// A text as character indices: the first 90% for training, the last 10%
/// held out (a contiguous tail, so no held-out sentence is seen in
/// training).
#[derive(Clone, Debug)]
pub struct Corpus {
    pub vocab: Vocab,
    pub train: Vec<i32>,
    pub held_out: Vec<i32>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl Corpus {
    /// The regular files of [`DEFAULT_TEXT_DIR`] in name order (symbolic
    /// links are skipped: they repeat a file under another name).
    pub fn default_files() -> Result<Vec<PathBuf>> {
        let dir = Path::new(DEFAULT_TEXT_DIR);
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::invalid(
                "corpus",
                format!(
                    "cannot list {}: {e}; name text files to train on instead",
                    dir.display()
                ),
            )
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::bad_file(dir, e.to_string()))?;
            let kind = entry
                .file_type()
                .map_err(|e| Error::bad_file(entry.path(), e.to_string()))?;
            if kind.is_file() {
                files.push(entry.path());
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(Error::invalid(
                "corpus",
                format!(
                    "{} holds no files; name text files to train on instead",
                    dir.display()
                ),
            ));
        }
        Ok(files)
    }

    /// The files' text, concatenated in order. Each must be a regular file
    /// of UTF-8 text; together they must hold enough text to split.
    pub fn load(files: &[PathBuf]) -> Result<Corpus> {
        let mut text = String::new();
        for path in files {
            let meta = std::fs::metadata(path).map_err(|e| Error::bad_file(path, e.to_string()))?;
            if !meta.is_file() {
                return Err(Error::bad_file(path, "not a regular file"));
            }
            let bytes = std::fs::read(path).map_err(|e| Error::bad_file(path, e.to_string()))?;
            let part = String::from_utf8(bytes)
                .map_err(|e| Error::bad_file(path, format!("not UTF-8 text: {e}")))?;
            text.push_str(&part);
        }
        Corpus::from_text(&text, files.to_vec())
    }

    /// `text` split 90/10.
    pub fn from_text(text: &str, files: Vec<PathBuf>) -> Result<Corpus> {
        let vocab = Vocab::from_text(text);
        let ids = vocab.encode(text)?;
        if ids.len() < 100 {
            return Err(Error::invalid(
                "corpus",
                format!(
                    "the text has {} characters; a language model needs at least 100",
                    ids.len()
                ),
            ));
        }
        let cut = ids.len() - ids.len() / 10;
        Ok(Corpus {
            vocab,
            train: ids[..cut].to_vec(),
            held_out: ids[cut..].to_vec(),
            files,
        })
    }

    /// Characters in all.
    pub fn len(&self) -> usize {
        self.train.len() + self.held_out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `text` cut into windows of `steps + 1` characters (inputs and the
/// targets one character on), in a seeded order: epoch `e` starts its
/// windows at an offset in `0..steps` and shuffles them, both drawn from
/// `(seed, e)`, so every epoch sees other boundaries and a resumed run the
/// same ones. Without a seed the windows start at 0 in order (evaluation).
pub fn windows(text: &[i32], steps: usize, seed: Option<(u64, usize)>) -> Vec<usize> {
    if steps == 0 || text.len() <= steps {
        return Vec::new();
    }
    let mut rng = seed.map(|(seed, epoch)| Rng::new(crate::sample_seed(seed, epoch, usize::MAX)));
    let offset = rng.as_mut().map_or(0, |r| r.below(steps as u64) as usize);
    let mut starts: Vec<usize> = (offset..text.len() - steps).step_by(steps).collect();
    if let Some(rng) = rng.as_mut() {
        for i in (1..starts.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            starts.swap(i, j);
        }
    }
    starts
}

/// Where `streams` stretches of a text of `len` characters start, for
/// reading them side by side in chunks of `steps` with the state carried
/// from one chunk to the next (truncated backpropagation through time),
/// and how many chunks each stretch has. The stretches follow each other
/// without gaps from an offset in `0..steps` drawn from `(seed, epoch)`,
/// so every epoch cuts its chunks elsewhere and a resumed run the same
/// ways; the chunk count does not depend on the offset, so every epoch has
/// as many batches of the same shape. None where the text is too short
/// for one chunk per stretch.
pub fn stream_starts(
    len: usize,
    streams: usize,
    steps: usize,
    (seed, epoch): (u64, usize),
) -> Option<(Vec<usize>, usize)> {
    if streams == 0 || steps == 0 {
        return None;
    }
    // The offset takes up to `steps - 1` characters and the last target is
    // one past its input, so `len - steps` characters are always there.
    let chunks = len.checked_sub(steps)? / streams / steps;
    if chunks == 0 {
        return None;
    }
    let offset = Rng::new(crate::sample_seed(seed, epoch, usize::MAX)).below(steps as u64) as usize;
    let stretch = chunks * steps;
    Some(((0..streams).map(|s| offset + s * stretch).collect(), chunks))
}

/// An order-`n` character model (the next character from the `n - 1`
/// before it) with interpolated Kneser-Ney smoothing down to a uniform
/// distribution over the vocabulary: the baseline a language model must
/// beat. Each level keeps all but [`NGram::DISCOUNT`] of every count it saw
/// and gives the rest to the level below, where a character counts once per
/// distinct longer context it followed (so that "t" after "ris" does not
/// make "t" likely everywhere).
pub struct NGram {
    order: usize,
    vocab: usize,
    /// Per context length `k` in `0..order`: what followed each context,
    /// counted by occurrences.
    counts: Vec<HashMap<Vec<i32>, Followers>>,
    /// Per context length `k` in `0..order - 1`: the same counted by the
    /// distinct characters before the context (continuation counts).
    continuations: Vec<HashMap<Vec<i32>, Followers>>,
}

/// The characters seen after one context: each one's count, and the total.
#[derive(Clone, Default)]
struct Followers {
    next: HashMap<i32, u32>,
    total: u32,
}

impl Followers {
    fn add(&mut self, next: i32) {
        *self.next.entry(next).or_default() += 1;
        self.total += 1;
    }
}

impl NGram {
    /// The absolute discount of interpolated Kneser-Ney.
    pub const DISCOUNT: f64 = 0.75;

    pub fn fit(text: &[i32], order: usize, vocab: usize) -> Result<NGram> {
        if order == 0 || vocab == 0 {
            return Err(Error::invalid(
                "n-gram",
                "the order and the vocabulary must be at least 1",
            ));
        }
        let mut counts: Vec<HashMap<Vec<i32>, Followers>> = vec![HashMap::new(); order];
        for i in 0..text.len() {
            for (k, table) in counts.iter_mut().enumerate() {
                if i < k {
                    break;
                }
                table
                    .entry(text[i - k..i].to_vec())
                    .or_default()
                    .add(text[i]);
            }
        }
        // Each (context, next) seen after a longer context counts once per
        // character that extended the context.
        let mut continuations: Vec<HashMap<Vec<i32>, Followers>> = vec![HashMap::new(); order - 1];
        for (k, table) in continuations.iter_mut().enumerate() {
            for (longer, followers) in &counts[k + 1] {
                let entry = table.entry(longer[1..].to_vec()).or_default();
                for &next in followers.next.keys() {
                    entry.add(next);
                }
            }
        }
        Ok(NGram {
            order,
            vocab,
            counts,
            continuations,
        })
    }

    /// P(next | the characters before it): from the uniform distribution
    /// up to the longest context, the longest by occurrences and the
    /// shorter ones by continuations.
    pub fn probability(&self, context: &[i32], next: i32) -> f64 {
        let levels = self.order.min(context.len() + 1);
        let mut p = 1.0 / self.vocab as f64;
        for k in 0..levels {
            let table = match k + 1 == levels {
                true => &self.counts[k],
                false => &self.continuations[k],
            };
            if let Some(followers) = table.get(&context[context.len() - k..]) {
                let total = f64::from(followers.total);
                let seen = f64::from(followers.next.get(&next).copied().unwrap_or(0));
                let distinct = followers.next.len() as f64;
                p = (seen - Self::DISCOUNT).max(0.0) / total
                    + Self::DISCOUNT * distinct / total * p;
            }
        }
        p
    }

    /// Mean bits per character of `text` (each character given the ones
    /// before it within `text`).
    pub fn bits_per_char(&self, text: &[i32]) -> f64 {
        let mut bits = 0.0;
        for i in 0..text.len() {
            let ctx = &text[i.saturating_sub(self.order - 1)..i];
            bits -= self.probability(ctx, text[i]).log2();
        }
        bits / text.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_round_trips_text_and_names_strangers() -> Result<()> {
        let v = Vocab::from_text("hello, world");
        assert_eq!(v.as_string(), " ,dehlorw");
        let ids = v.encode("world, hello")?;
        assert_eq!(v.decode(&ids)?, "world, hello");
        let err = v
            .encode("help")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("'p'"), "{err}");
        assert!(v.decode(&[9]).is_err() && v.decode(&[-1]).is_err());
        assert_eq!(Vocab::from_string(&v.as_string())?, v);
        assert!(Vocab::from_string("abca").is_err());
        Ok(())
    }

    #[test]
    fn streams_tile_the_text_from_a_seeded_offset() {
        let (len, streams, steps) = (1000, 7, 9);
        let (a, chunks) = stream_starts(len, streams, steps, (3, 0)).unwrap(); // ok: a test
        assert_eq!(chunks, (len - steps) / streams / steps);
        let stretch = chunks * steps;
        assert!(a.windows(2).all(|w| w[1] - w[0] == stretch));
        assert!(a[0] < steps);
        // The last target of the last stretch is inside the text.
        assert!(a[streams - 1] + stretch < len);
        assert_eq!(
            stream_starts(len, streams, steps, (3, 0)),
            Some((a.clone(), chunks))
        );
        // Other epochs start elsewhere with as many chunks.
        let offsets: std::collections::HashSet<usize> = (0..20)
            .map(|e| {
                let (starts, n) = stream_starts(len, streams, steps, (3, e)).unwrap(); // ok: a test
                assert_eq!(n, chunks);
                starts[0]
            })
            .collect();
        assert!(offsets.len() > 3, "{offsets:?}");
        assert!(offsets.iter().all(|&o| o < steps));
        // Too short for a chunk per stretch, or nothing to read.
        assert_eq!(
            stream_starts(streams * steps + steps - 1, streams, steps, (3, 0)),
            None
        );
        assert!(stream_starts(streams * steps + steps, streams, steps, (3, 0)).is_some());
        assert_eq!(stream_starts(len, 0, steps, (3, 0)), None);
        assert_eq!(stream_starts(len, streams, 0, (3, 0)), None);
    }

    #[test]
    fn windows_cover_the_text_in_a_seeded_order() {
        let text: Vec<i32> = (0..1000).collect();
        let plain = windows(&text, 10, None);
        assert_eq!(plain.len(), 99);
        assert_eq!(plain[..3], [0, 10, 20]);
        let a = windows(&text, 10, Some((3, 0)));
        assert_eq!(a, windows(&text, 10, Some((3, 0))));
        assert_ne!(a, windows(&text, 10, Some((3, 1))));
        // Every window and its target fit in the text, and no two overlap.
        let mut sorted = a.clone();
        sorted.sort();
        assert!(sorted.windows(2).all(|w| w[1] - w[0] == 10));
        assert!(sorted.iter().all(|&s| s + 10 < text.len()));
        assert!(windows(&text[..10], 10, None).is_empty());
    }

    #[test]
    fn ngram_probabilities_sum_to_one_and_learn_a_pattern() -> Result<()> {
        let text: Vec<i32> = "abcabcabcabd".bytes().map(|b| (b - b'a') as i32).collect();
        let model = NGram::fit(&text, 3, 5)?;
        for ctx in [&[][..], &[0][..], &[0, 1][..], &[4, 4][..]] {
            let sum: f64 = (0..5).map(|c| model.probability(ctx, c)).sum();
            assert!((sum - 1.0).abs() < 1e-12, "{ctx:?}: {sum}");
        }
        assert!(model.probability(&[0, 1], 2) > 0.6);
        // Far better than uniform (log2 5 = 2.32 bits) on its own pattern.
        assert!(model.bits_per_char(&text) < 1.5);
        Ok(())
    }

    #[test]
    fn ngram_lower_orders_count_contexts_not_occurrences() -> Result<()> {
        // 'a' follows 'x' five times; 'b' follows four different letters.
        let text: Vec<i32> = "xaxaxaxaxaqbrbsbtb"
            .bytes()
            .map(|b| i32::from(b - b'a'))
            .collect();
        let model = NGram::fit(&text, 2, 26)?;
        // After a letter never seen as a context, only the lower order
        // speaks: it ranks 'b' (four contexts) above 'a' (one), unlike raw
        // counts (5 against 4).
        let unseen = [i32::from(b'z' - b'a')];
        assert!(model.probability(&unseen, 1) > 2.0 * model.probability(&unseen, 0));
        let sum: f64 = (0..26).map(|c| model.probability(&unseen, c)).sum();
        assert!((sum - 1.0).abs() < 1e-12, "{sum}");
        Ok(())
    }

    #[test]
    fn a_corpus_refuses_what_is_not_a_regular_file() {
        let err = Corpus::load(&[PathBuf::from("/dev/zero")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("regular file"), "{err}");
        assert!(Corpus::load(&[PathBuf::from("/")]).is_err());
        assert!(Corpus::from_text("short", Vec::new()).is_err());
    }
}
