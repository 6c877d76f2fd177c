//! Generated images as one PNG: a grid a person can look at.

use cinder_tensor::{Error, Result};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

/// Grey between the cells.
const BORDER_GREY: u8 = 96;

/// `count` square one-channel images of `side` pixels, values in [-1, 1]
/// (a tanh generator's range; outside is clamped), laid out `columns` to a
/// row, each pixel drawn `scale` x `scale`, a pixel of border around every
/// cell, as PNG bytes: white ink on black, as MNIST stores digits.
pub fn image_grid(
    pixels: &[f32],
    count: usize,
    side: usize,
    columns: usize,
    scale: usize,
) -> Result<Vec<u8>> {
    if count == 0 || side == 0 || columns == 0 || scale == 0 || pixels.len() != count * side * side
    {
        return Err(Error::invalid(
            "image_grid",
            format!(
                "{} values are not {count} images of {side}x{side} ({columns} columns, scale {scale})",
                pixels.len()
            ),
        ));
    }
    let rows = count.div_ceil(columns);
    let cell = side * scale + 1;
    let (width, height) = (columns * cell + 1, rows * cell + 1);
    let mut canvas = vec![BORDER_GREY; width * height];
    for (i, image) in pixels.chunks(side * side).enumerate() {
        let (x0, y0) = ((i % columns) * cell + 1, (i / columns) * cell + 1);
        for y in 0..side * scale {
            for x in 0..side * scale {
                let v = image[(y / scale) * side + x / scale].clamp(-1.0, 1.0);
                canvas[(y0 + y) * width + x0 + x] = ((v + 1.0) * 127.5).round() as u8;
            }
        }
    }
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&canvas, width as u32, height as u32, ExtendedColorType::L8)
        .map_err(|e| Error::invalid("image_grid", e.to_string()))?;
    Ok(png)
}

/// The first row of cells of each grid (PNGs that [`image_grid`] wrote
/// with the same layout and `cell` pixels per cell, border included),
/// stacked top to bottom as one PNG: a run's progress at a glance, one
/// row per epoch.
pub fn stack_first_rows(grids: &[Vec<u8>], cell: usize) -> Result<Vec<u8>> {
    let mut rows: Vec<u8> = Vec::new();
    let mut width = 0;
    for png in grids {
        let img = image::load_from_memory(png)
            .map_err(|e| Error::invalid("stack_first_rows", e.to_string()))?
            .to_luma8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        if h < cell + 1 || (width != 0 && w != width) {
            return Err(Error::invalid(
                "stack_first_rows",
                format!("a grid of {w}x{h} does not match the others (cells of {cell})"),
            ));
        }
        width = w;
        rows.extend_from_slice(&img.as_raw()[..cell * w]);
    }
    if width == 0 {
        return Err(Error::invalid("stack_first_rows", "no grids to stack"));
    }
    rows.extend(std::iter::repeat_n(BORDER_GREY, width));
    let height = rows.len() / width;
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&rows, width as u32, height as u32, ExtendedColorType::L8)
        .map_err(|e| Error::invalid("stack_first_rows", e.to_string()))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_hold_their_images_scaled_inside_borders() {
        // Three 2x2 images, two to a row, drawn 3x3 per pixel.
        let pixels = [
            -1.0, 1.0, 0.0, -1.0, // black, white / grey, black
            1.0, 1.0, 1.0, 1.0, // all white
            -2.0, 2.0, -1.0, -1.0, // clamped
        ];
        let png = image_grid(&pixels, 3, 2, 2, 3).unwrap(); // ok: a test
        let img = image::load_from_memory(&png).unwrap().to_luma8(); // ok: a test
        assert_eq!(img.dimensions(), (2 * 7 + 1, 2 * 7 + 1));
        assert_eq!(img.get_pixel(0, 0).0[0], BORDER_GREY);
        assert_eq!(img.get_pixel(1, 1).0[0], 0);
        assert_eq!(img.get_pixel(4, 3).0[0], 255);
        assert_eq!(img.get_pixel(3, 4).0[0], 128);
        assert_eq!(img.get_pixel(7, 1).0[0], BORDER_GREY);
        assert_eq!(img.get_pixel(8, 6).0[0], 255);
        assert_eq!(img.get_pixel(4, 9).0[0], 255);
        // The empty fourth cell stays border grey.
        assert_eq!(img.get_pixel(10, 10).0[0], BORDER_GREY);
        assert!(image_grid(&pixels, 2, 2, 2, 3).is_err());

        // Two grids' first rows, one above the other, and a closing border.
        let white = image_grid(&[1.0; 12], 3, 2, 2, 3).unwrap(); // ok: a test
        let stacked = stack_first_rows(&[png, white], 7).unwrap(); // ok: a test
        let img = image::load_from_memory(&stacked).unwrap().to_luma8(); // ok: a test
        assert_eq!(img.dimensions(), (15, 15));
        assert_eq!(img.get_pixel(1, 1).0[0], 0);
        assert_eq!(img.get_pixel(1, 8).0[0], 255);
        assert_eq!(img.get_pixel(3, 7).0[0], BORDER_GREY);
        assert_eq!(img.get_pixel(3, 14).0[0], BORDER_GREY);
        assert!(stack_first_rows(&[], 7).is_err());
    }
}
