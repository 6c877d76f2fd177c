//! Draws a few scenes of real digits as `DigitScenes` makes them for
//! segmentation and detection: each scene, its class mask over it, and its
//! boxes with their digits.
//!
//!     cargo run --release --example digit_scenes -- scenes.png

use std::sync::Arc;

use cinder::cnn::overlay::{Canvas, DIGIT_COLOURS};
use cinder::data::{DigitScenes, Mnist};

fn main() -> cinder::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "scenes.png".into());
    let split = Mnist::bundled()?;
    let scenes = DigitScenes::new(Arc::new(split.train), 6, 0)?;
    let (side, scale, gap) = (96, 2, 4);
    let cell = side * scale + gap;
    let mut canvas = Canvas::new(3 * cell + gap, scenes.len() * cell + gap + 18);
    for i in 0..scenes.len() {
        let scene = scenes.scene(i);
        let y = gap + i * cell;
        canvas.image(gap, y, side, scale, &scene.image, None);
        canvas.image(gap + cell, y, side, scale, &scene.image, Some(&scene.mask));
        canvas.image(gap + 2 * cell, y, side, scale, &scene.image, None);
        for (b, &class) in scene.boxes.iter().zip(&scene.classes) {
            let colour = DIGIT_COLOURS[class as usize];
            canvas.outline(gap + 2 * cell, y, scale, *b, colour, 2);
            let label_y = (y + (b[1] * scale as f32) as usize)
                .saturating_sub(12)
                .max(y);
            canvas.text(
                gap + 2 * cell + (b[0] * scale as f32) as usize,
                label_y,
                &class.to_string(),
                2,
                colour,
            );
        }
    }
    canvas.legend(gap, scenes.len() * cell + gap, 2);
    cinder::nn::checkpoint::write_atomic(std::path::Path::new(&out), &canvas.png()?)?;
    println!(
        "wrote {out}: {} scenes, each beside its mask and its boxes",
        scenes.len()
    );
    Ok(())
}
