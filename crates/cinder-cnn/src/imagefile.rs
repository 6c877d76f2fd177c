//! Turning a user's image file into the input a trained model expects: the
//! same size, channel count, polarity and normalisation as its training data.

use std::io::{Cursor, Read};
use std::path::Path;

use cinder_nn::checkpoint::open_regular_file;
use cinder_tensor::{Error, Result};
use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

/// How a model's training images look, so a user's photo can be converted the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageStyle {
    /// The bundled UCI digits: 8x8, one channel, ink bright on dark, values in [0, 1] (ink counts of 4x4 blocks of a 32x32 size-normalised bitmap, divided by 16).
    Digits8x8,
    /// MNIST: 28x28, one channel, ink bright (1.0) on black (0.0), the digit size-normalised into a 20x20 box and centred by its centre of mass.
    Mnist28,
    /// Ordinary RGB photos resized to the model's size, values in [0, 1], channel-major.
    Natural { height: usize, width: usize },
}

impl ImageStyle {
    /// `[channels, height, width]` of the values [`image_to_input`] returns.
    pub fn shape(&self) -> [usize; 3] {
        match *self {
            ImageStyle::Digits8x8 => [1, 8, 8],
            ImageStyle::Mnist28 => [1, 28, 28],
            ImageStyle::Natural { height, width } => [3, height, width],
        }
    }
}

/// Reads an image file of any size and colour (PNG, JPEG) and returns the
/// CHW f32 values the model takes. A file that is not one a model can be
/// shown is [`Error::BadFile`] naming it, and says why: a path that is not a
/// regular file (checked before opening, so a FIFO or `/dev/zero` cannot
/// hang the caller), an empty file, a truncated one ("truncated"), one that
/// is not an image, or a blank picture ("blank": one colour, or for the
/// digit styles no ink that stands out from the paper), which a model would
/// still assign a confident class.
pub fn load_image(path: &Path, style: ImageStyle) -> Result<Vec<f32>> {
    image_values(path, &decode_image(path)?, style)
}

/// The picture in an image file, decoded and turned upright (a photo's
/// EXIF turn applied): its width and height are the ones a person sees.
/// The file is refused as [`load_image`] says, blank pictures aside.
pub fn decode_image(path: &Path) -> Result<DynamicImage> {
    let (file, len) = open_regular_file(path)?;
    if len == 0 {
        return Err(Error::bad_file(path, "empty file"));
    }
    // The whole file is read, because whether a JPEG is complete shows only
    // at its end; one larger than the decoder would allocate is refused
    // before reading it.
    let limit = Limits::default().max_alloc.unwrap_or(u64::MAX);
    if len > limit {
        return Err(Error::bad_file(
            path,
            format!("{len} bytes: larger than an image file may be ({limit} bytes)"),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let mut reader = ImageReader::new(Cursor::new(bytes.as_slice()));
    // The extension is the fallback when the content is not recognised, so
    // a damaged file.png is reported as a bad PNG.
    if let Ok(format) = ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    let reader = reader
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format() == Some(ImageFormat::Jpeg) && jpeg_is_truncated(&bytes) {
        return Err(Error::bad_file(
            path,
            "truncated: the JPEG data stops before its end-of-image marker \
             (a partial download or copy?)",
        ));
    }
    let not_image = |e: ImageError| match e {
        // Decoding from memory, a read that ends early is the file ending
        // early: a PNG cut short.
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Error::bad_file(
            path,
            format!("truncated: the file ends inside the image ({e})"),
        ),
        e => Error::bad_file(path, format!("not an image: {e}")),
    };
    let mut decoder = reader.into_decoder().map_err(not_image)?;
    // `ImageReader::decode` makes this check; the decoder path must make it
    // itself, or a forged header could ask for gigabytes.
    Limits::default()
        .reserve(decoder.total_bytes())
        .map_err(not_image)?;
    // Phones store photos sideways and record the turn in EXIF; a digit read
    // without applying it reaches the model rotated.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(not_image)?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::bad_file(path, "the image has zero width or height"));
    }
    Ok(img)
}

/// `img`, decoded from `path`, as the values a model of `style` takes;
/// a blank picture is refused (see [`load_image`]).
pub fn image_values(path: &Path, img: &DynamicImage, style: ImageStyle) -> Result<Vec<f32>> {
    let blank = |why: String| Error::bad_file(path, format!("blank: {why}; nothing to classify"));
    let range = colour_range(img);
    if range < MIN_CONTRAST {
        return Err(blank(format!(
            "its colours vary by only {:.1}% of the full range",
            100.0 * range
        )));
    }
    to_input(img, style)?.ok_or_else(|| {
        blank(format!(
            "no ink stands out from the paper by {:.0}% or more",
            100.0 * MIN_CONTRAST
        ))
    })
}

/// Whether JPEG data stops before its end-of-image marker (FF D9), as a
/// partial download or copy does. The decoder fills the missing rows with
/// grey and says nothing, and the model would classify half a picture.
/// The segments are walked from the start (an EXIF thumbnail holds an
/// FF D9 of its own, so the last bytes alone cannot tell): headers are
/// skipped by their lengths, and a scan's entropy-coded data runs to the
/// first FF not followed by 00 (a stuffed byte) or a restart marker. Only
/// running out of data counts; anything else the walk does not understand
/// is left to the decoder to judge.
fn jpeg_is_truncated(data: &[u8]) -> bool {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        match data.get(i) {
            None => return true,
            Some(0xFF) => {}
            // Not a marker where one must be: damage, not truncation.
            Some(_) => return false,
        }
        // Any number of FF fill bytes may precede a marker's code.
        while data.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = data.get(i) else {
            return true;
        };
        i += 1;
        match code {
            0xD9 => return false,
            // Markers without a length: start of image, restarts, TEM.
            0xD8 | 0xD0..=0xD7 | 0x01 => continue,
            0x00 => return false,
            _ => {}
        }
        let Some(&[hi, lo]) = data.get(i..i + 2) else {
            return true;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len < 2 {
            return false;
        }
        // The length counts its own two bytes.
        i += len;
        if i > data.len() {
            return true;
        }
        if code == 0xDA {
            // A scan's data, up to the next marker.
            loop {
                let Some(at) = data[i..].iter().position(|&b| b == 0xFF) else {
                    return true;
                };
                i += at;
                match data.get(i + 1) {
                    None => return true,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// The largest spread, max minus min on a 0..1 scale, of any colour channel
/// over the picture, with transparent pixels shown on white as a viewer
/// would. Near zero, the picture is one colour: blank.
fn colour_range(img: &DynamicImage) -> f32 {
    let mut lo = [1.0f32; 3];
    let mut hi = [0.0f32; 3];
    for p in img.to_rgba8().pixels() {
        let [r, g, b, a] = p.0.map(|c| c as f32 / 255.0);
        for (c, v) in [r, g, b].into_iter().enumerate() {
            let v = a * v + (1.0 - a);
            lo[c] = lo[c].min(v);
            hi[c] = hi[c].max(v);
        }
    }
    (0..3).map(|c| hi[c] - lo[c]).fold(0.0, f32::max)
}

/// The conversion [`load_image`] applies after decoding: CHW values of
/// `style.shape()`. A digit style given an image with no ink gives zeros.
pub fn image_to_input(img: &DynamicImage, style: ImageStyle) -> Result<Vec<f32>> {
    let [c, h, w] = style.shape();
    Ok(to_input(img, style)?.unwrap_or_else(|| vec![0.0; c * h * w]))
}

/// [`image_to_input`], with `None` where a digit style finds no ink.
fn to_input(img: &DynamicImage, style: ImageStyle) -> Result<Option<Vec<f32>>> {
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::invalid(
            "image_to_input",
            "the image has zero width or height",
        ));
    }
    match style {
        ImageStyle::Digits8x8 => Ok(ink(img).map(|p| digits8x8(&p))),
        ImageStyle::Mnist28 => Ok(ink(img).map(|p| mnist28(&p))),
        ImageStyle::Natural { height, width } => natural(img, height, width).map(Some),
    }
}

fn natural(img: &DynamicImage, height: usize, width: usize) -> Result<Vec<f32>> {
    let size = |n: usize| u32::try_from(n).ok().filter(|&n| n > 0);
    let (Some(h), Some(w)) = (size(height), size(width)) else {
        return Err(Error::invalid(
            "image_to_input",
            format!("Natural size {height}x{width} must be positive and fit in u32"),
        ));
    };
    let rgb = image::imageops::resize(&img.to_rgb8(), w, h, FilterType::Triangle);
    let plane = height * width;
    let mut out = vec![0.0; 3 * plane];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = p.0[c] as f32 / 255.0;
        }
    }
    Ok(out)
}

/// One channel of f32 values, row-major.
struct Plane {
    w: usize,
    h: usize,
    v: Vec<f32>,
}

/// Below this contrast between ink and paper (on a 0..1 scale) a picture is
/// taken to be blank: what remains is sensor noise and paper texture.
const MIN_CONTRAST: f32 = 0.1;

/// The digit's ink, bright on dark, cropped to its bounding box and scaled so
/// the strongest ink is 1; `None` if the picture holds no ink.
fn ink(img: &DynamicImage) -> Option<Plane> {
    let rgba = img.to_rgba8();
    let (w, h) = (rgba.width() as usize, rgba.height() as usize);
    // Transparent pixels count as white paper, as a viewer would show them.
    let mut v: Vec<f32> = rgba
        .pixels()
        .map(|p| {
            let [r, g, b, a] = p.0.map(|c| c as f32 / 255.0);
            a * (0.2126 * r + 0.7152 * g + 0.0722 * b) + (1.0 - a)
        })
        .collect();

    // Training digits are bright ink on dark; handwriting is dark on light
    // paper. The outer frame is mostly paper, so its brightness decides.
    let t = (w.min(h) / 20).max(1);
    let in_frame = |i: usize| {
        let (x, y) = (i % w, i / w);
        x < t || y < t || x >= w - t || y >= h - t
    };
    let (sum, n) = v
        .iter()
        .enumerate()
        .filter(|&(i, _)| in_frame(i))
        .fold((0.0f64, 0usize), |(s, n), (_, &x)| (s + x as f64, n + 1));
    if sum / n as f64 > 0.5 {
        v.iter_mut().for_each(|x| *x = 1.0 - *x);
    }

    // Grey paper is not faint ink: the median (the paper, since ink covers
    // less than half the picture) becomes zero.
    let mut hist = [0usize; 256];
    for &x in &v {
        hist[(x.clamp(0.0, 1.0) * 255.0).round() as usize] += 1;
    }
    let (mut seen, mut bin) = (0, 0);
    while seen + hist[bin] <= v.len() / 2 {
        seen += hist[bin];
        bin += 1;
    }
    let background = bin as f32 / 255.0;
    let max = v.iter().fold(0.0f32, |m, &x| m.max(x - background));
    if max < MIN_CONTRAST {
        return None;
    }
    let threshold = background + 0.2 * max;
    let mut mask: Vec<bool> = v.iter().map(|&x| x > threshold).collect();
    drop_specks(&mut mask, w, h);

    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (i, _) in mask.iter().enumerate().filter(|&(_, &m)| m) {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let (cw, ch) = (x1 + 1 - x0, y1 + 1 - y0);
    let mut crop = Vec::with_capacity(cw * ch);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let i = y * w + x;
            crop.push(if mask[i] {
                (v[i] - background) / max
            } else {
                0.0
            });
        }
    }
    Some(Plane {
        w: cw,
        h: ch,
        v: crop,
    })
}

/// Clears connected ink regions smaller than 5% of the largest: dust, paper
/// fibres and JPEG noise would otherwise stretch the bounding box. Strokes of
/// one digit broken by a pen lifting stay, being much larger than that.
fn drop_specks(mask: &mut [bool], w: usize, h: usize) {
    let mut label = vec![usize::MAX; mask.len()];
    let mut sizes: Vec<usize> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != usize::MAX {
            continue;
        }
        let id = sizes.len();
        let mut size = 0;
        label[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % w, i / w);
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let j = ny * w + nx;
                    if mask[j] && label[j] == usize::MAX {
                        label[j] = id;
                        stack.push(j);
                    }
                }
            }
        }
        sizes.push(size);
    }
    let keep = sizes.iter().max().copied().unwrap_or(0) / 20;
    for (m, &l) in mask.iter_mut().zip(&label) {
        if *m && sizes[l] < keep {
            *m = false;
        }
    }
}

/// The UCI digits: the crop padded square, size-normalised to a 32x32 bitmap,
/// then ink counted in 4x4 blocks.
fn digits8x8(p: &Plane) -> Vec<f32> {
    let side = p.w.max(p.h);
    let (ox, oy) = ((side - p.w) / 2, (side - p.h) / 2);
    let mut square = Plane {
        w: side,
        h: side,
        v: vec![0.0; side * side],
    };
    for y in 0..p.h {
        let row = (y + oy) * side + ox;
        square.v[row..row + p.w].copy_from_slice(&p.v[y * p.w..(y + 1) * p.w]);
    }
    let small = area_resize(&square, 32, 32);
    // Relative to the peak, so a thin pen line that averages below 0.5 at
    // this size still leaves a trace to thicken.
    let peak = small.v.iter().fold(0.0f32, |m, &x| m.max(x));
    let mut bits: Vec<bool> = small.v.iter().map(|&x| x >= 0.5 * peak).collect();
    // The UCI bitmaps have thick strokes: a quarter or more of the 1024
    // pixels are ink in nearly every digit (about 310 on average). Pen
    // strokes in a photo are much thinner, so they are widened to match.
    for _ in 0..8 {
        if bits.iter().filter(|&&b| b).count() >= 256 {
            break;
        }
        bits = dilate(&bits, 32, 32, |a, b| a || b);
    }
    let mut out = vec![0.0; 64];
    for (i, _) in bits.iter().enumerate().filter(|&(_, &b)| b) {
        out[(i / 32 / 4) * 8 + (i % 32) / 4] += 1.0 / 16.0;
    }
    out
}

/// MNIST: the crop scaled so its longer side is 20 pixels, placed in 28x28
/// with its centre of mass at the centre.
fn mnist28(p: &Plane) -> Vec<f32> {
    let long = p.w.max(p.h) as f32;
    let fit = |n: usize| ((n as f32 * 20.0 / long).round() as usize).clamp(1, 20);
    let sized = area_resize(p, fit(p.w), fit(p.h));
    // Two pixels of margin leave room for the widening below.
    let mut small = Plane {
        w: sized.w + 4,
        h: sized.h + 4,
        v: vec![0.0; (sized.w + 4) * (sized.h + 4)],
    };
    for y in 0..sized.h {
        let row = (y + 2) * small.w + 2;
        small.v[row..row + sized.w].copy_from_slice(&sized.v[y * sized.w..(y + 1) * sized.w]);
    }
    let normalise = |v: &mut [f32]| {
        let peak = v.iter().fold(0.0f32, |m, &x| m.max(x));
        if peak > 0.0 {
            v.iter_mut().for_each(|x| *x /= peak);
        }
    };
    normalise(&mut small.v);
    // MNIST strokes are 2-3 pixels wide; a photographed pen line shrinks to
    // a faint single pixel, so it is widened until the digit carries ink
    // comparable to a thin MNIST digit (a 20-pixel "1", 2.5 pixels wide).
    for _ in 0..2 {
        if small.v.iter().sum::<f32>() >= 50.0 {
            break;
        }
        small.v = dilate(&small.v, small.w, small.h, f32::max);
        normalise(&mut small.v);
    }

    let mass: f32 = small.v.iter().sum();
    let (mut cx, mut cy) = (0.0, 0.0);
    for (i, &x) in small.v.iter().enumerate() {
        cx += x * ((i % small.w) as f32 + 0.5);
        cy += x * ((i / small.w) as f32 + 0.5);
    }
    let place = |c: f32, n: usize| ((14.0 - c / mass).round().max(0.0) as usize).min(28 - n);
    let (ox, oy) = (place(cx, small.w), place(cy, small.h));
    let mut out = vec![0.0; 28 * 28];
    for y in 0..small.h {
        let row = (y + oy) * 28 + ox;
        out[row..row + small.w].copy_from_slice(&small.v[y * small.w..(y + 1) * small.w]);
    }
    out
}

/// Each pixel combined with its four neighbours.
fn dilate<T: Copy>(v: &[T], w: usize, h: usize, join: impl Fn(T, T) -> T) -> Vec<T> {
    let mut out = v.to_vec();
    for (i, o) in out.iter_mut().enumerate() {
        let (x, y) = (i % w, i / w);
        let mut near = |j: usize| *o = join(*o, v[j]);
        if x > 0 {
            near(i - 1);
        }
        if x + 1 < w {
            near(i + 1);
        }
        if y > 0 {
            near(i - w);
        }
        if y + 1 < h {
            near(i + w);
        }
    }
    out
}

/// For each of `dst` output pixels, the source pixels it covers and the
/// fraction of it each one fills: resampling by area keeps thin strokes as
/// faint ink instead of skipping them.
fn coverage(src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let (a, b) = (d as f64 * scale, (d + 1) as f64 * scale);
            (a.floor() as usize..(b.ceil() as usize).min(src))
                .map(|s| {
                    (
                        s,
                        ((b.min(s as f64 + 1.0) - a.max(s as f64)) / scale) as f32,
                    )
                })
                .filter(|&(_, weight)| weight > 0.0)
                .collect()
        })
        .collect()
}

fn area_resize(p: &Plane, w: usize, h: usize) -> Plane {
    let (across, down) = (coverage(p.w, w), coverage(p.h, h));
    let mut rows = vec![0.0f32; p.h * w];
    for y in 0..p.h {
        for (x, taps) in across.iter().enumerate() {
            rows[y * w + x] = taps.iter().map(|&(s, k)| p.v[y * p.w + s] * k).sum();
        }
    }
    let mut v = vec![0.0f32; h * w];
    for (y, taps) in down.iter().enumerate() {
        for x in 0..w {
            v[y * w + x] = taps.iter().map(|&(s, k)| rows[s * w + x] * k).sum();
        }
    }
    Plane { w, h, v }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;
    use image::{Rgb, RgbImage};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A 200 wide, 300 tall sheet of paper with a dark "1": a bar 30 wide
    /// and 200 tall in the middle.
    fn one_on_paper() -> RgbImage {
        RgbImage::from_fn(200, 300, |x, y| {
            let ink = (85..115).contains(&x) && (50..250).contains(&y);
            Rgb(if ink { [0, 0, 0] } else { [255, 255, 255] })
        })
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn shapes() {
        assert_eq!(ImageStyle::Digits8x8.shape(), [1, 8, 8]);
        assert_eq!(ImageStyle::Mnist28.shape(), [1, 28, 28]);
        assert_eq!(
            ImageStyle::Natural {
                height: 5,
                width: 7
            }
            .shape(),
            [3, 5, 7]
        );
    }

    #[test]
    fn digits8x8_puts_a_one_in_the_middle_columns() -> TestResult {
        let img = DynamicImage::ImageRgb8(one_on_paper());
        let out = image_to_input(&img, ImageStyle::Digits8x8)?;
        assert_eq!(out.len(), 64);
        assert!(out.iter().all(|&v| (0.0..=1.0).contains(&v)));
        for row in out.chunks(8) {
            assert!(row[3] > 0.5 && row[4] > 0.5, "{row:?}");
            assert_eq!([row[0], row[1], row[6], row[7]], [0.0; 4], "{row:?}");
        }
        // Thickened to the UCI digits' ink level, as a real "1" there is.
        let ink: f32 = out.iter().sum::<f32>() * 16.0;
        assert!((256.0..400.0).contains(&ink), "{ink}");
        Ok(())
    }

    #[test]
    fn polarity_does_not_matter() -> TestResult {
        let dark_on_light = DynamicImage::ImageRgb8(one_on_paper());
        let mut light_on_dark = dark_on_light.clone();
        light_on_dark.invert();
        for style in [ImageStyle::Digits8x8, ImageStyle::Mnist28] {
            let a = image_to_input(&dark_on_light, style)?;
            let b = image_to_input(&light_on_dark, style)?;
            assert!(a.iter().any(|&v| v > 0.0));
            assert!(close(&a, &b), "{style:?}");
        }
        Ok(())
    }

    #[test]
    fn grey_paper_and_specks_are_ignored() -> TestResult {
        let clean = image_to_input(
            &DynamicImage::ImageRgb8(one_on_paper()),
            ImageStyle::Digits8x8,
        )?;
        let mut img = one_on_paper();
        for p in img.pixels_mut() {
            if p.0 == [255, 255, 255] {
                *p = Rgb([200, 200, 190]);
            }
        }
        // A 3x3 speck near a corner would stretch the bounding box.
        for (x, y) in (5..8).flat_map(|x| (5..8).map(move |y| (x, y))) {
            img.put_pixel(x, y, Rgb([0, 0, 0]));
        }
        let out = image_to_input(&DynamicImage::ImageRgb8(img), ImageStyle::Digits8x8)?;
        assert!(close(&out, &clean), "{out:?}");
        Ok(())
    }

    #[test]
    fn mnist28_is_centred_by_mass() -> TestResult {
        let img = DynamicImage::ImageRgb8(one_on_paper());
        let out = image_to_input(&img, ImageStyle::Mnist28)?;
        assert_eq!(out.len(), 784);
        let max = out.iter().fold(0.0f32, |m, &v| m.max(v));
        assert_eq!(max, 1.0);
        assert!(out.iter().all(|&v| v >= 0.0));
        let mass: f32 = out.iter().sum();
        let cx = out
            .iter()
            .enumerate()
            .map(|(i, v)| v * ((i % 28) as f32 + 0.5))
            .sum::<f32>()
            / mass;
        let cy = out
            .iter()
            .enumerate()
            .map(|(i, v)| v * ((i / 28) as f32 + 0.5))
            .sum::<f32>()
            / mass;
        assert!(
            (cx - 14.0).abs() <= 1.0 && (cy - 14.0).abs() <= 1.0,
            "({cx}, {cy})"
        );
        // The bar's 200 pixels of height become the 20-pixel box.
        let rows = out
            .chunks(28)
            .filter(|r| r.iter().any(|&v| v > 0.5))
            .count();
        assert_eq!(rows, 20);
        Ok(())
    }

    #[test]
    fn thin_strokes_are_thickened() -> TestResult {
        let img = RgbImage::from_fn(400, 600, |x, y| {
            let ink = (199..202).contains(&x) && (100..500).contains(&y);
            Rgb(if ink { [0, 0, 0] } else { [255, 255, 255] })
        });
        let img = DynamicImage::ImageRgb8(img);
        let digits = image_to_input(&img, ImageStyle::Digits8x8)?;
        assert!(digits.iter().sum::<f32>() * 16.0 >= 256.0);
        let mnist = image_to_input(&img, ImageStyle::Mnist28)?;
        assert!(mnist.iter().sum::<f32>() >= 50.0);
        Ok(())
    }

    #[test]
    fn blank_pictures_give_zeros() -> TestResult {
        let white = DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 48, Rgb([250, 250, 250])));
        let noisy = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| {
            Rgb([240 + ((x * 7 + y * 13) % 11) as u8; 3])
        }));
        for img in [white, noisy] {
            assert_eq!(image_to_input(&img, ImageStyle::Digits8x8)?, vec![0.0; 64]);
            assert_eq!(image_to_input(&img, ImageStyle::Mnist28)?, vec![0.0; 784]);
        }
        Ok(())
    }

    #[test]
    fn natural_is_rgb_channel_major() -> TestResult {
        let red = DynamicImage::ImageRgb8(RgbImage::from_pixel(50, 40, Rgb([255, 0, 0])));
        let out = image_to_input(
            &red,
            ImageStyle::Natural {
                height: 8,
                width: 6,
            },
        )?;
        assert_eq!(out.len(), 3 * 8 * 6);
        assert!(out[..48].iter().all(|&v| (v - 1.0).abs() < 1e-6));
        assert!(out[48..].iter().all(|&v| v.abs() < 1e-6));

        // Within a channel, rows of `width` values, top row first.
        let mut img = RgbImage::new(4, 2);
        img.put_pixel(3, 0, Rgb([0, 255, 0]));
        let out = image_to_input(
            &DynamicImage::ImageRgb8(img),
            ImageStyle::Natural {
                height: 2,
                width: 4,
            },
        )?;
        let lit: Vec<usize> = (0..out.len()).filter(|&i| out[i] > 0.5).collect();
        assert_eq!(lit, [8 + 3]);

        assert!(image_to_input(
            &red,
            ImageStyle::Natural {
                height: 0,
                width: 4
            }
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn empty_images_are_rejected() {
        let img = DynamicImage::new_luma8(0, 5);
        assert!(matches!(
            image_to_input(&img, ImageStyle::Mnist28),
            Err(Error::InvalidArgument { .. })
        ));
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "cinder-cnn-imagefile-{}-{n}-{name}",
            std::process::id()
        ))
    }

    #[test]
    fn load_image_reads_files_and_reports_bad_ones() -> TestResult {
        let missing = temp_path("missing.png");
        let err = load_image(&missing, ImageStyle::Mnist28).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");

        let empty = temp_path("empty.png");
        std::fs::write(&empty, b"")?;
        let err = load_image(&empty, ImageStyle::Mnist28);
        std::fs::remove_file(&empty)?;
        assert!(
            matches!(&err, Err(Error::BadFile { reason, .. }) if reason.contains("empty")),
            "{err:?}"
        );

        let garbage = temp_path("garbage.jpg");
        std::fs::write(&garbage, b"this is not a picture at all")?;
        let err = load_image(&garbage, ImageStyle::Mnist28);
        std::fs::remove_file(&garbage)?;
        assert!(
            matches!(&err, Err(Error::BadFile { reason, .. }) if reason.contains("not an image")),
            "{err:?}"
        );

        let good = temp_path("one.png");
        let img = DynamicImage::ImageRgb8(one_on_paper());
        img.save(&good)?;
        // Cut short, the same file is a bad file, not an I/O failure.
        let bytes = std::fs::read(&good)?;
        let cut = temp_path("cut.png");
        std::fs::write(&cut, &bytes[..bytes.len() / 2])?;
        let loaded = load_image(&good, ImageStyle::Digits8x8);
        let truncated = load_image(&cut, ImageStyle::Digits8x8);
        std::fs::remove_file(&good)?;
        std::fs::remove_file(&cut)?;
        assert_eq!(loaded?, image_to_input(&img, ImageStyle::Digits8x8)?);
        assert!(
            matches!(truncated, Err(Error::BadFile { .. })),
            "{truncated:?}"
        );
        Ok(())
    }

    /// A photo-like "1": dark ink on textured paper, so its JPEG is large.
    fn textured_one() -> RgbImage {
        RgbImage::from_fn(200, 300, |x, y| {
            let grain = ((x * 7919 + y * 104_729) % 23) as u8;
            if (85..115).contains(&x) && (50..250).contains(&y) {
                Rgb([20 + grain, 20 + grain, 30 + grain])
            } else {
                Rgb([210 + grain, 205 + grain, 200 + grain])
            }
        })
    }

    fn reason(result: Result<Vec<f32>>) -> String {
        match result {
            Err(Error::BadFile { reason, .. }) => reason,
            other => format!("not a BadFile: {other:?}"),
        }
    }

    #[test]
    fn truncated_files_are_reported_as_truncated() -> TestResult {
        let full = temp_path("full.jpg");
        DynamicImage::ImageRgb8(textured_one()).save(&full)?;
        let jpeg = std::fs::read(&full)?;
        assert!(!jpeg_is_truncated(&jpeg));
        // Bytes after the end-of-image marker (some cameras append data)
        // do not make a file truncated.
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"appended by a camera");
        assert!(!jpeg_is_truncated(&trailing));
        for cut in [jpeg.len() / 10, jpeg.len() / 2, jpeg.len() - 2, 3, 30] {
            assert!(jpeg_is_truncated(&jpeg[..cut]), "cut at {cut}");
        }
        let loaded = load_image(&full, ImageStyle::Mnist28);
        let cut = temp_path("cut.jpg");
        std::fs::write(&cut, &jpeg[..jpeg.len() - 2])?;
        let truncated = reason(load_image(&cut, ImageStyle::Mnist28));
        let png = temp_path("cut.png");
        DynamicImage::ImageRgb8(textured_one()).save(&png)?;
        let bytes = std::fs::read(&png)?;
        std::fs::write(&png, &bytes[..bytes.len() / 2])?;
        let truncated_png = reason(load_image(&png, ImageStyle::Mnist28));
        for path in [&full, &cut, &png] {
            std::fs::remove_file(path)?;
        }
        assert!(loaded.is_ok(), "{loaded:?}");
        assert!(truncated.starts_with("truncated"), "{truncated}");
        assert!(truncated_png.starts_with("truncated"), "{truncated_png}");
        Ok(())
    }

    #[test]
    fn blank_pictures_are_reported_as_blank() -> TestResult {
        let natural = ImageStyle::Natural {
            height: 16,
            width: 16,
        };
        let white = temp_path("white.png");
        RgbImage::from_pixel(64, 48, Rgb([250, 250, 245])).save(&white)?;
        // Unevenly lit paper, a brighter patch on the right: not one
        // colour, but no ink darker than the paper for a digit model.
        let paper = temp_path("paper.png");
        RgbImage::from_fn(64, 48, |x, _| Rgb([if x < 38 { 220 } else { 250 }; 3])).save(&paper)?;
        let results = [
            reason(load_image(&white, natural)),
            reason(load_image(&white, ImageStyle::Digits8x8)),
            reason(load_image(&paper, ImageStyle::Mnist28)),
        ];
        // To a model of natural pictures that is a picture.
        let natural_paper = load_image(&paper, natural);
        std::fs::remove_file(&white)?;
        std::fs::remove_file(&paper)?;
        for r in results {
            assert!(r.starts_with("blank"), "{r}");
        }
        assert!(natural_paper.is_ok(), "{natural_paper:?}");
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn paths_that_are_not_regular_files_are_refused() {
        let dir = temp_path("folder.png");
        let made = std::fs::create_dir_all(&dir);
        let folder = reason(load_image(&dir, ImageStyle::Mnist28));
        let zero = reason(load_image(Path::new("/dev/zero"), ImageStyle::Mnist28));
        let _ = std::fs::remove_dir(&dir);
        assert!(made.is_ok(), "{made:?}");
        assert!(
            folder.contains("a directory, not a regular file"),
            "{folder}"
        );
        assert!(zero.contains("not a regular file"), "{zero}");
    }
}
