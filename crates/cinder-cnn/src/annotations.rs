//! A user's own images for segmentation and detection, as a
//! [`SceneList`]: images with PNG class masks, and images with boxes in a
//! simple JSON file or a COCO-style one.
//!
//! Every image is shown to the models as the scenes are: resized to a square
//! `side`, grey, light ink on dark (a mostly light picture is inverted; see
//! [`load_scene_image`](crate::segment::load_scene_image)), upright (a
//! photo's EXIF turn applied). Masks must have their image's size and are
//! resized by nearest pixel; box coordinates are pixels of the upright
//! image, and are scaled with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cinder_data::{Scene, SceneList};
use cinder_tensor::{Error, Result};
use serde_json::Value;

use crate::imagefile::decode_image;
use crate::segment::scene_image;

fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid(
            "annotations",
            format!("no PNG or JPEG images in {}", dir.display()),
        ));
    }
    Ok(files)
}

/// A class mask from an 8-bit grey PNG whose pixel values are classes (0
/// for background), of `size` (its image's width and height), resized to
/// `side` by nearest pixel.
pub fn load_mask(path: &Path, size: (u32, u32), side: usize) -> Result<Vec<i32>> {
    let picture = image::open(path)
        .map_err(|e| Error::bad_file(path, format!("not a readable mask image: {e}")))?;
    // The brightness of a colour or 16-bit mask is not its class: a
    // palette's colours, or class 3 stored as 3/65535, would read as others.
    let grey = match picture {
        image::DynamicImage::ImageLuma8(g) => g,
        image::DynamicImage::ImageLumaA8(g) => image::DynamicImage::ImageLumaA8(g).to_luma8(),
        other => {
            return Err(Error::bad_file(
                path,
                format!(
                    "a mask must be 8-bit grey, one class per pixel value; this one is {:?}",
                    other.color()
                ),
            ))
        }
    };
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    if (grey.width(), grey.height()) != size {
        return Err(Error::bad_file(
            path,
            format!("the mask is {w}x{h}, its image {}x{}", size.0, size.1),
        ));
    }
    let mut mask = Vec::with_capacity(side * side);
    for y in 0..side {
        for x in 0..side {
            // The source pixel whose centre is nearest this pixel's centre.
            let sx = ((x * 2 + 1) * w / (2 * side)).min(w - 1);
            let sy = ((y * 2 + 1) * h / (2 * side)).min(h - 1);
            mask.push(grey.get_pixel(sx as u32, sy as u32).0[0] as i32);
        }
    }
    Ok(mask)
}

/// Every PNG or JPEG image in `images` with the mask of the same name (and
/// a `.png` extension) in `masks`: a mask's grey values are classes, 0 for
/// background. Scenes in file-name order, with no boxes.
pub fn masked_images(images: &Path, masks: &Path, side: usize) -> Result<SceneList> {
    let mut scenes = Vec::new();
    for path in image_files(images)? {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let mask_path = masks.join(format!("{}.png", stem.unwrap_or_default()));
        if !mask_path.is_file() {
            return Err(Error::bad_file(
                &path,
                format!("has no mask {}", mask_path.display()),
            ));
        }
        let picture = decode_image(&path)?;
        let size = (picture.width(), picture.height());
        scenes.push(Scene {
            image: scene_image(&path, &picture, side)?,
            mask: load_mask(&mask_path, size, side)?,
            boxes: Vec::new(),
            classes: Vec::new(),
            side,
        });
    }
    SceneList::new(scenes, side)
}

/// One image's boxes as the JSON file gives them, before scaling.
struct Annotated {
    path: PathBuf,
    boxes: Vec<[f32; 4]>,
    classes: Vec<i32>,
}

fn number(value: &Value, what: &str, file: &Path) -> Result<f64> {
    value
        .as_f64()
        .ok_or_else(|| Error::bad_file(file, format!("{what} is not a number: {value}")))
}

fn four_numbers(value: &Value, what: &str, file: &Path) -> Result<[f32; 4]> {
    let items = value
        .as_array()
        .filter(|a| a.len() == 4)
        .ok_or_else(|| Error::bad_file(file, format!("{what} is not 4 numbers: {value}")))?;
    let mut out = [0f32; 4];
    for (o, v) in out.iter_mut().zip(items) {
        *o = number(v, what, file)? as f32;
    }
    Ok(out)
}

/// The simple format: an array of `{"image": "a.png", "boxes": [[x0, y0,
/// x1, y1], ...], "classes": [3, ...]}`, paths relative to the file.
fn simple_format(items: &[Value], file: &Path, root: &Path) -> Result<Vec<Annotated>> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| {
            item.get(name)
                .ok_or_else(|| Error::bad_file(file, format!("entry {i} has no \"{name}\"")))
        };
        let image = field("image")?
            .as_str()
            .ok_or_else(|| Error::bad_file(file, format!("entry {i}'s image is not a path")))?;
        let boxes = field("boxes")?
            .as_array()
            .ok_or_else(|| Error::bad_file(file, format!("entry {i}'s boxes are not a list")))?
            .iter()
            .map(|b| four_numbers(b, "a box", file))
            .collect::<Result<Vec<_>>>()?;
        let classes = field("classes")?
            .as_array()
            .ok_or_else(|| Error::bad_file(file, format!("entry {i}'s classes are not a list")))?
            .iter()
            .map(|c| {
                c.as_u64()
                    .and_then(|c| i32::try_from(c).ok())
                    .ok_or_else(|| Error::bad_file(file, format!("class {c} is not a class index")))
            })
            .collect::<Result<Vec<_>>>()?;
        if boxes.len() != classes.len() {
            return Err(Error::bad_file(
                file,
                format!(
                    "entry {i} has {} boxes and {} classes",
                    boxes.len(),
                    classes.len()
                ),
            ));
        }
        out.push(Annotated {
            path: root.join(image),
            boxes,
            classes,
        });
    }
    Ok(out)
}

/// COCO's layout: `images` (`id`, `file_name`), `annotations` (`image_id`,
/// `bbox` as `[x, y, width, height]`, `category_id`, optional `iscrowd`)
/// and `categories` (`id`); classes are the categories in increasing `id`
/// order. Crowd annotations (`iscrowd` 1) are left out, as COCO's
/// evaluation ignores them.
fn coco_format(doc: &Value, file: &Path, root: &Path) -> Result<Vec<Annotated>> {
    let list = |name: &str| {
        doc.get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| Error::bad_file(file, format!("no \"{name}\" list")))
    };
    let id_of = |v: &Value, what: &str| {
        v.get("id")
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::bad_file(file, format!("{what} without an integer id: {v}")))
    };
    let duplicate = |what: &str, id: i64| Error::bad_file(file, format!("two {what} have id {id}"));
    let mut category_ids: Vec<i64> = list("categories")?
        .iter()
        .map(|c| id_of(c, "a category"))
        .collect::<Result<_>>()?;
    category_ids.sort_unstable();
    if let Some(w) = category_ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(duplicate("categories", w[0]));
    }
    let class_of: HashMap<i64, i32> = category_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i as i32))
        .collect();
    let mut images: Vec<Annotated> = Vec::new();
    let mut slot_of: HashMap<i64, usize> = HashMap::new();
    for image in list("images")? {
        let id = id_of(image, "an image")?;
        let name = image
            .get("file_name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_file(file, format!("image {id} has no file_name")))?;
        if slot_of.insert(id, images.len()).is_some() {
            return Err(duplicate("images", id));
        }
        images.push(Annotated {
            path: root.join(name),
            boxes: Vec::new(),
            classes: Vec::new(),
        });
    }
    for a in list("annotations")? {
        let field = |name: &str| {
            a.get(name)
                .ok_or_else(|| Error::bad_file(file, format!("an annotation without {name}: {a}")))
        };
        if a.get("iscrowd").and_then(Value::as_i64) == Some(1) {
            continue;
        }
        let image = field("image_id")?.as_i64().and_then(|id| slot_of.get(&id));
        let image = *image.ok_or_else(|| {
            Error::bad_file(file, format!("an annotation of an unknown image: {a}"))
        })?;
        let category = field("category_id")?
            .as_i64()
            .and_then(|id| class_of.get(&id));
        let class = *category.ok_or_else(|| {
            Error::bad_file(file, format!("an annotation of an unknown category: {a}"))
        })?;
        let [x, y, w, h] = four_numbers(field("bbox")?, "a bbox", file)?;
        images[image].boxes.push([x, y, x + w, y + h]);
        images[image].classes.push(class);
    }
    Ok(images)
}

/// `b` checked against an upright image of `size`: finite, with positive
/// width and height, and clipped to the image (a box wholly outside it is
/// refused).
fn checked_box(b: [f32; 4], size: (u32, u32), file: &Path, image: &Path) -> Result<[f32; 4]> {
    let bad = |why: &str| Error::bad_file(file, format!("box {b:?} of {}: {why}", image.display()));
    if b.iter().any(|v| !v.is_finite()) {
        return Err(bad("not finite"));
    }
    if b[2] <= b[0] || b[3] <= b[1] {
        return Err(bad(
            "its right and bottom sides must be past its left and top ([x0, y0, x1, y1])",
        ));
    }
    let (w, h) = (size.0 as f32, size.1 as f32);
    let clipped = [b[0].max(0.0), b[1].max(0.0), b[2].min(w), b[3].min(h)];
    if clipped[2] <= clipped[0] || clipped[3] <= clipped[1] {
        return Err(bad(&format!("outside the {}x{} image", size.0, size.1)));
    }
    Ok(clipped)
}

/// The images of a JSON file of boxes, either the simple format (a list of
/// `{"image", "boxes" (xyxy pixels), "classes"}`) or COCO's (`images`,
/// `annotations` with `xywh` boxes, `categories`), with paths relative to
/// `images` (default: the file's folder). Scenes in the file's order, with
/// empty masks.
pub fn boxed_images(file: &Path, images: Option<&Path>, side: usize) -> Result<SceneList> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| Error::bad_file(file, format!("not JSON: {e}")))?;
    let root = match images {
        Some(dir) => dir.to_path_buf(),
        None => file.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let annotated = match &doc {
        Value::Array(items) => simple_format(items, file, &root)?,
        Value::Object(_) => coco_format(&doc, file, &root)?,
        _ => {
            return Err(Error::bad_file(
                file,
                "neither a list of images with boxes nor a COCO file",
            ))
        }
    };
    let mut scenes = Vec::with_capacity(annotated.len());
    for a in annotated {
        let picture = decode_image(&a.path)?;
        let size = (picture.width(), picture.height());
        let (sx, sy) = (side as f32 / size.0 as f32, side as f32 / size.1 as f32);
        let boxes = a
            .boxes
            .iter()
            .map(|&b| checked_box(b, size, file, &a.path))
            .collect::<Result<Vec<_>>>()?;
        scenes.push(Scene {
            image: scene_image(&a.path, &picture, side)?,
            mask: vec![0; side * side],
            boxes: boxes
                .iter()
                .map(|b| [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy])
                .collect(),
            classes: a.classes,
            side,
        });
    }
    SceneList::new(scenes, side)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_data::SceneSource;

    fn scratch(name: &str) -> Result<PathBuf> {
        let dir =
            std::env::temp_dir().join(format!("cinder-annotations-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    fn save(picture: &image::GrayImage, path: &Path) -> Result<()> {
        picture
            .save(path)
            .map_err(|e| Error::bad_file(path, e.to_string()))
    }

    #[test]
    fn images_with_masks_pair_by_name_and_resize() -> Result<()> {
        let dir = scratch("masks")?;
        let (images, masks) = (dir.join("images"), dir.join("masks"));
        for d in [&images, &masks] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        // 8x8 with ink in the left half, class 3 there.
        let ink =
            image::GrayImage::from_fn(8, 8, |x, _| image::Luma([if x < 4 { 200 } else { 0 }]));
        let mask = image::GrayImage::from_fn(8, 8, |x, _| image::Luma([if x < 4 { 3 } else { 0 }]));
        save(&ink, &images.join("a.png"))?;
        save(&mask, &masks.join("a.png"))?;
        let list = masked_images(&images, &masks, 4)?;
        assert_eq!(list.len(), 1);
        let scene = list.scene(0)?;
        assert_eq!(scene.mask, [3, 3, 0, 0].repeat(4));
        assert!(scene.image[0] > 0.5 && scene.image[3] < 0.5);
        assert_eq!(list.max_class(), 3);
        save(&ink, &images.join("b.png"))?;
        let err = masked_images(&images, &masks, 4)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("has no mask")));
        // A mask of another size, or in colour, is refused.
        save(&image::GrayImage::new(8, 6), &masks.join("b.png"))?;
        let err = masked_images(&images, &masks, 4)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("8x6")));
        let colour = masks.join("b.png");
        image::RgbImage::new(8, 8)
            .save(&colour)
            .map_err(|e| Error::bad_file(&colour, e.to_string()))?;
        let err = masked_images(&images, &masks, 4)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("8-bit grey")));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn boxes_from_simple_and_coco_files_scale_with_the_image() -> Result<()> {
        let dir = scratch("boxes")?;
        let ink =
            image::GrayImage::from_fn(20, 10, |x, _| image::Luma([if x < 5 { 200 } else { 0 }]));
        save(&ink, &dir.join("a.png"))?;
        let simple = dir.join("boxes.json");
        let write =
            |path: &Path, text: &str| std::fs::write(path, text).map_err(|e| Error::io(path, e));
        write(
            &simple,
            r#"[{"image": "a.png", "boxes": [[2, 1, 12, 9]], "classes": [7]}]"#,
        )?;
        let list = boxed_images(&simple, None, 40)?;
        let scene = list.scene(0)?;
        assert_eq!(scene.boxes, vec![[4.0, 4.0, 24.0, 36.0]]);
        assert_eq!(scene.classes, vec![7]);
        assert_eq!(list.max_objects(), 1);
        let coco = dir.join("coco.json");
        write(
            &coco,
            r#"{"images": [{"id": 5, "file_name": "a.png", "width": 20, "height": 10}],
                "annotations": [{"image_id": 5, "bbox": [2, 1, 10, 8], "category_id": 12},
                                {"image_id": 5, "bbox": [0, 0, 5, 5], "category_id": 3}],
                "categories": [{"id": 12, "name": "b"}, {"id": 3, "name": "a"}]}"#,
        )?;
        let scene = boxed_images(&coco, Some(&dir), 40)?.scene(0)?;
        assert_eq!(
            scene.boxes,
            vec![[4.0, 4.0, 24.0, 36.0], [0.0, 0.0, 10.0, 20.0]]
        );
        assert_eq!(scene.classes, vec![1, 0], "categories in id order");
        write(
            &coco,
            r#"{"images": [], "annotations": [{"image_id": 1}], "categories": []}"#,
        )?;
        assert!(boxed_images(&coco, None, 40).is_err());
        // Crowds are left out; a repeated image id is refused.
        write(
            &coco,
            r#"{"images": [{"id": 5, "file_name": "a.png"}],
                "annotations": [{"image_id": 5, "bbox": [2, 1, 10, 8], "category_id": 3, "iscrowd": 1},
                                {"image_id": 5, "bbox": [0, 0, 5, 5], "category_id": 3}],
                "categories": [{"id": 3}]}"#,
        )?;
        assert_eq!(boxed_images(&coco, None, 40)?.scene(0)?.boxes.len(), 1);
        write(
            &coco,
            r#"{"images": [{"id": 5, "file_name": "a.png"}, {"id": 5, "file_name": "a.png"}],
                "annotations": [], "categories": []}"#,
        )?;
        assert!(boxed_images(&coco, None, 40).is_err());
        // Boxes past the image are clipped; inverted ([x, y, w, h] written
        // as corners), non-finite or wholly outside ones are refused.
        write(
            &simple,
            r#"[{"image": "a.png", "boxes": [[15, 5, 30, 20]], "classes": [1]}]"#,
        )?;
        assert_eq!(
            boxed_images(&simple, None, 40)?.scene(0)?.boxes,
            vec![[30.0, 20.0, 40.0, 40.0]]
        );
        for bad in ["[12, 8, 4, 2]", "[1, 2, 1e39, 9]", "[25, 1, 30, 5]"] {
            write(
                &simple,
                &format!(r#"[{{"image": "a.png", "boxes": [{bad}], "classes": [1]}}]"#),
            )?;
            let err = boxed_images(&simple, None, 40).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("box")), "{bad}");
        }
        write(
            &simple,
            r#"[{"image": "a.png", "boxes": [[1, 2, 3]], "classes": [1]}]"#,
        )?;
        assert!(boxed_images(&simple, None, 40).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
