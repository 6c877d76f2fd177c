//! Embeds the spoken-digit clips in `data/` as a table of `(file name, bytes)`.
//!
//! There are 1400 of them, too many to list by hand beside `include_bytes!`, and
//! embedding (as for the other bundled data) keeps `SpokenDigits::bundled` working
//! from any directory and in a packaged crate.

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;

fn main() -> Result<(), Box<dyn Error>> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let out = std::env::var("OUT_DIR")?;
    let mut code = String::new();
    for (name, folder) in [
        ("SPOKEN_DIGITS", "spoken-digits"),
        ("SPOKEN_DIGITS_NOISY", "spoken-digits-noisy"),
    ] {
        let dir = Path::new(&manifest).join("data").join(folder);
        // A directory here makes Cargo rerun the script when any file in it changes.
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("wav"))
            {
                files.push(path);
            }
        }
        // read_dir's order depends on the file system; sorting keeps builds identical.
        files.sort();
        writeln!(code, "static {name}: &[(&str, &[u8])] = &[")?;
        for path in &files {
            let file = path
                .file_name()
                .and_then(|f| f.to_str())
                .ok_or_else(|| format!("{}: file name is not UTF-8", path.display()))?;
            let full = path
                .to_str()
                .ok_or_else(|| format!("{}: path is not UTF-8", path.display()))?;
            writeln!(code, "    ({file:?}, include_bytes!({full:?})),")?;
        }
        writeln!(code, "];")?;
    }
    std::fs::write(Path::new(&out).join("spoken_digits.rs"), code)?;
    Ok(())
}
