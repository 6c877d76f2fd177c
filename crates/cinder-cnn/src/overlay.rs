//! Pictures of what a segmentation or detection model sees: masks in
//! colour over the image, with a legend, as PNG bytes.

use cinder_tensor::{Error, Result};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

/// One colour per digit (a Kelly-like palette, far apart for the eye);
/// index `d` is digit `d`.
pub const DIGIT_COLOURS: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
];

/// How strongly a mask's colour covers the image.
const MASK_ALPHA: f32 = 0.6;
const BACKGROUND: [u8; 3] = [48, 48, 48];

/// 3x5 glyphs of `0123456789.`, a row of 3 bits per line, top line first.
const GLYPHS: [(char, [u8; 5]); 11] = [
    ('0', [0b111, 0b101, 0b101, 0b101, 0b111]),
    ('1', [0b010, 0b110, 0b010, 0b010, 0b111]),
    ('2', [0b111, 0b001, 0b111, 0b100, 0b111]),
    ('3', [0b111, 0b001, 0b111, 0b001, 0b111]),
    ('4', [0b101, 0b101, 0b111, 0b001, 0b001]),
    ('5', [0b111, 0b100, 0b111, 0b001, 0b111]),
    ('6', [0b111, 0b100, 0b111, 0b101, 0b111]),
    ('7', [0b111, 0b001, 0b010, 0b010, 0b010]),
    ('8', [0b111, 0b101, 0b111, 0b101, 0b111]),
    ('9', [0b111, 0b101, 0b111, 0b001, 0b111]),
    ('.', [0b000, 0b000, 0b000, 0b000, 0b010]),
];

/// An RGB picture being drawn.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Canvas {
        let rgb = BACKGROUND.repeat(width * height);
        Canvas { width, height, rgb }
    }

    pub fn set(&mut self, x: usize, y: usize, colour: [u8; 3]) {
        if x < self.width && y < self.height {
            let at = 3 * (y * self.width + x);
            self.rgb[at..at + 3].copy_from_slice(&colour);
        }
    }

    fn fill(&mut self, x0: usize, y0: usize, w: usize, h: usize, colour: [u8; 3]) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, colour);
            }
        }
    }

    /// A grayscale image (values in [0, 1]) of `side` pixels at `(x0, y0)`,
    /// each pixel `scale` wide, with `mask`'s nonzero classes (digit
    /// `class - 1`) tinted in their colours.
    pub fn image(
        &mut self,
        x0: usize,
        y0: usize,
        side: usize,
        scale: usize,
        image: &[f32],
        mask: Option<&[i32]>,
    ) {
        for y in 0..side * scale {
            for x in 0..side * scale {
                let at = (y / scale) * side + x / scale;
                let grey = image[at].clamp(0.0, 1.0) * 255.0;
                let mut colour = [grey; 3];
                if let Some(class) = mask.map(|m| m[at]).filter(|&c| c > 0) {
                    let tint = DIGIT_COLOURS[(class as usize - 1) % 10];
                    for (c, t) in colour.iter_mut().zip(tint) {
                        *c = *c * (1.0 - MASK_ALPHA) + t as f32 * MASK_ALPHA;
                    }
                }
                self.set(x0 + x, y0 + y, colour.map(|c| c.round() as u8));
            }
        }
    }

    /// `text` (digits and points) at `(x, y)`, each glyph pixel `size` wide.
    pub fn text(&mut self, x: usize, y: usize, text: &str, size: usize, colour: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let Some((_, rows)) = GLYPHS.iter().find(|(g, _)| *g == ch) else {
                continue;
            };
            let left = x + i * 4 * size;
            for (line, bits) in rows.iter().enumerate() {
                for column in 0..3 {
                    if bits & (0b100 >> column) != 0 {
                        self.fill(left + column * size, y + line * size, size, size, colour);
                    }
                }
            }
        }
    }

    /// The outline of a box `[x0, y0, x1, y1]` (in pixels of a picture drawn
    /// at `scale` from `(left, top)`), `thickness` wide.
    pub fn outline(
        &mut self,
        left: usize,
        top: usize,
        scale: usize,
        b: [f32; 4],
        colour: [u8; 3],
        thickness: usize,
    ) {
        let px = |v: f32| (v.max(0.0) * scale as f32).round() as usize;
        let (x0, y0, x1, y1) = (
            left + px(b[0]),
            top + px(b[1]),
            left + px(b[2]),
            top + px(b[3]),
        );
        let (w, h) = (x1.saturating_sub(x0).max(1), y1.saturating_sub(y0).max(1));
        self.fill(x0, y0, w, thickness, colour);
        self.fill(x0, y1.saturating_sub(thickness), w, thickness, colour);
        self.fill(x0, y0, thickness, h, colour);
        self.fill(x1.saturating_sub(thickness), y0, thickness, h, colour);
    }

    /// `text` in `colour` on a dark plate whose top left corner is `(x,
    /// y)`, so a label stays readable over any image; the plate is
    /// [`Canvas::label_height`] high.
    pub fn label(&mut self, x: usize, y: usize, text: &str, size: usize, colour: [u8; 3]) {
        let w = Canvas::label_width(text, size);
        self.fill(x, y, w, Canvas::label_height(size), [20, 20, 20]);
        self.text(x + size, y + size / 2, text, size, colour);
    }

    pub fn label_height(size: usize) -> usize {
        6 * size
    }

    pub fn label_width(text: &str, size: usize) -> usize {
        text.chars().count() * 4 * size + size
    }

    /// A row of the ten digits' colours, each with its digit, at `(x, y)`;
    /// returns the row's height.
    pub fn legend(&mut self, x: usize, y: usize, size: usize) -> usize {
        let swatch = 5 * size;
        for (d, colour) in DIGIT_COLOURS.iter().enumerate() {
            let left = x + d * (swatch + 6 * size);
            self.fill(left, y, swatch, swatch, *colour);
            self.text(
                left + swatch + size,
                y,
                &d.to_string(),
                size,
                [235, 235, 235],
            );
        }
        swatch
    }

    pub fn png(&self) -> Result<Vec<u8>> {
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(
                &self.rgb,
                self.width as u32,
                self.height as u32,
                ExtendedColorType::Rgb8,
            )
            .map_err(|e| Error::invalid("png", e.to_string()))?;
        Ok(png)
    }
}

/// One row per scene: the image, the predicted mask over it and, where
/// given, the true mask over it, drawn twice size, with the digits' colours
/// under them. `images` `[n, side, side]` in [0, 1]; `predicted` and
/// `truth` `[n, side, side]` classes (0 background, `d + 1` digit `d`).
pub fn segmentation_sheet(
    images: &[f32],
    predicted: &[i32],
    truth: Option<&[i32]>,
    n: usize,
    side: usize,
) -> Result<Vec<u8>> {
    let plane = side * side;
    if images.len() != n * plane
        || predicted.len() != n * plane
        || truth.is_some_and(|t| t.len() != n * plane)
    {
        return Err(Error::invalid(
            "segmentation_sheet",
            format!(
                "{} image, {} predicted and {} true values are not {n} maps of {side}x{side}",
                images.len(),
                predicted.len(),
                truth.map_or(0, <[i32]>::len)
            ),
        ));
    }
    let (scale, gap) = (2, 4);
    let cell = side * scale + gap;
    let columns = if truth.is_some() { 3 } else { 2 };
    let legend_height = 5 * 2 + 2 * gap;
    let width = (columns * cell + gap).max(10 * 22 + 2 * gap);
    let mut canvas = Canvas::new(width, n * cell + gap + legend_height);
    for i in 0..n {
        let maps = i * plane..(i + 1) * plane;
        let (image, y) = (&images[maps.clone()], gap + i * cell);
        canvas.image(gap, y, side, scale, image, None);
        canvas.image(
            gap + cell,
            y,
            side,
            scale,
            image,
            Some(&predicted[maps.clone()]),
        );
        if let Some(truth) = truth {
            canvas.image(gap + 2 * cell, y, side, scale, image, Some(&truth[maps]));
        }
    }
    canvas.legend(gap, n * cell + gap + gap / 2, 2);
    canvas.png()
}

/// One row per image: the image with its detections (boxes in their
/// digit's colour, labelled with the digit and the score) and, where given,
/// the image with its true boxes, drawn twice size, with the digits' colours
/// under them. `images` `[n, side, side]` in [0, 1].
pub fn detection_sheet(
    images: &[f32],
    detections: &[Vec<crate::average_precision::Detection>],
    truth: Option<&[Vec<crate::average_precision::TrueBox>]>,
    side: usize,
) -> Result<Vec<u8>> {
    let (plane, n) = (side * side, detections.len());
    if images.len() != n * plane || truth.is_some_and(|t| t.len() != n) {
        return Err(Error::invalid(
            "detection_sheet",
            format!(
                "{} image values, {n} images of detections and {} of true boxes for {side}x{side} images",
                images.len(),
                truth.map_or(0, <[_]>::len)
            ),
        ));
    }
    let (scale, gap) = (2, 4);
    let cell = side * scale + gap;
    let columns = if truth.is_some() { 2 } else { 1 };
    let legend_height = 5 * 2 + 2 * gap;
    let width = (columns * cell + gap).max(10 * 22 + 2 * gap);
    let mut canvas = Canvas::new(width, n * cell + gap + legend_height);
    let colour = |class: usize| DIGIT_COLOURS[class % 10];
    // Boxes are clipped to the image (a diverged model's box may be huge or
    // infinite); a label goes above its box, or inside its top where the
    // image has no room above, and is shifted left to stay on the image.
    let panel = side * scale;
    let clip = |b: [f32; 4]| {
        b.map(|v| {
            if v.is_finite() {
                v.clamp(0.0, side as f32)
            } else {
                0.0
            }
        })
    };
    let place = |b: [f32; 4], text: &str| {
        let px = |v: f32| (v * scale as f32) as usize;
        let (h, w) = (Canvas::label_height(2), Canvas::label_width(text, 2));
        let y = px(b[1]);
        let y = if y >= h { y - h } else { y + 2 };
        (px(b[0]).min(panel.saturating_sub(w)), y)
    };
    for (i, found) in detections.iter().enumerate() {
        let (image, y) = (&images[i * plane..(i + 1) * plane], gap + i * cell);
        canvas.image(gap, y, side, scale, image, None);
        for d in found {
            let b = clip(d.bbox);
            canvas.outline(gap, y, scale, b, colour(d.class), 2);
            let label = format!("{} {:.2}", d.class, d.score);
            let (lx, ly) = place(b, &label);
            canvas.label(gap + lx, y + ly, &label, 2, colour(d.class));
        }
        if let Some(truth) = truth {
            canvas.image(gap + cell, y, side, scale, image, None);
            for t in &truth[i] {
                let b = clip(t.bbox);
                canvas.outline(gap + cell, y, scale, b, colour(t.class), 2);
                let label = t.class.to_string();
                let (lx, ly) = place(b, &label);
                canvas.label(gap + cell + lx, y + ly, &label, 2, colour(t.class));
            }
        }
    }
    canvas.legend(gap, n * cell + gap + gap / 2, 2);
    canvas.png()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sheet_tints_masks_and_draws_a_legend(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let side = 4;
        let image = vec![1.0f32; 16];
        let mut truth = vec![0i32; 16];
        truth[5] = 4; // digit 3
        let png = segmentation_sheet(&image, &[0; 16], Some(&truth), 1, side)?;
        let picture = image::load_from_memory(&png)?.to_rgb8();
        // Untinted white in the prediction, digit 3's tint in the truth.
        let (cell, gap) = (side * 2 + 4, 4);
        assert_eq!(
            picture
                .get_pixel((gap + cell + 2) as u32, (gap + 2) as u32)
                .0,
            [255, 255, 255]
        );
        let tinted = picture
            .get_pixel((gap + 2 * cell + 2) as u32, (gap + 2) as u32)
            .0;
        let want = DIGIT_COLOURS[3].map(|t| (255.0 * 0.4 + t as f32 * 0.6).round() as u8);
        assert_eq!(tinted, want);
        assert!(segmentation_sheet(&image, &truth, Some(&truth), 2, side).is_err());
        assert!(segmentation_sheet(&image, &truth, None, 1, side).is_ok());
        Ok(())
    }
}
