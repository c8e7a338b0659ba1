//! Regenerates `models/src/vision/imagenet_product_categories.tsv`: the Google product
//! taxonomy path of each ImageNet class that is a product.
//!
//! ImageNet's object and food classes (398–969; below are animals, above are landscapes,
//! people, plants and fungi) are embedded with MiniLM and matched to the nearest taxonomy
//! path, the same search EBRM uses for titles. A match below `MIN_COSINE` is dropped (the
//! class names no product), and `OVERRIDES` fixes the matches a reviewer found wrong.
//!
//! `cargo run --release -p tandem-ebrm --example make_imagenet_categories > models/src/vision/imagenet_product_categories.tsv`

use anyhow::{Context, Result};
use tandem_ebrm::TextEncoder;
use tandem_ebrm::encoder::ModelEncoder;
use tandem_ebrm::entities::taxonomy::EmbeddedTaxonomy;
use tandem_models::BackendChoice;
use tandem_models::registry::known_model;
use tandem_models::vision::imagenet_classes;

const PRODUCT_CLASSES: std::ops::RangeInclusive<usize> = 398..=969;
const MIN_COSINE: f32 = 0.5;

/// Words that mark a path as a part or an accessory of a product rather than the product: a
/// path with one below its top level is only taken when the class name has the word too
/// ("guitar" is not "... Guitar Accessories > Guitar Pickups").
const PART_WORDS: &[&str] = &[
    "Accessor",
    "Parts",
    "Replacement",
    "Holders",
    "Stands",
    "Pickups",
    "Padding",
    "Rests",
    "Racks",
    "Caps",
    "Cleats",
    "Collars",
    "Slings",
    "Rings",
    "Spools",
    "Nibs",
    "Mouthpieces",
];

/// (class, path or "" for not a product): reviewed corrections of the nearest-path match.
const OVERRIDES: &[(usize, &str)] = &[
    (399, "Apparel & Accessories > Clothing > Traditional & Ceremonial Clothing"),
    (402, "Arts & Entertainment > Hobbies & Creative Arts > Musical Instruments > String Instruments > Guitars"),
    (407, ""),
    (408, ""),
    (410, ""),
    (412, "Home & Garden > Household Supplies > Waste Containment > Trash Cans & Wastebaskets"),
    (413, ""),
    (418, "Office Supplies > Office Instruments > Writing & Drawing Instruments > Pens & Pencils > Pens"),
    (419, "Health & Beauty > Health Care > First Aid > Medical Tape & Bandages"),
    (420, "Arts & Entertainment > Hobbies & Creative Arts > Musical Instruments > String Instruments"),
    (424, ""),
    (427, ""),
    (434, "Home & Garden > Linens & Bedding > Towels > Bath Towels & Washcloths"),
    (440, "Food, Beverages & Tobacco > Beverages > Alcoholic Beverages > Beer"),
    (443, "Baby & Toddler > Nursing & Feeding > Bibs"),
    (457, "Apparel & Accessories > Clothing Accessories > Neckties"),
    (459, "Apparel & Accessories > Clothing > Underwear & Socks > Bras"),
    (461, ""),
    (462, "Home & Garden > Household Supplies > Household Cleaning Supplies > Brooms"),
    (467, ""),
    (470, "Home & Garden > Decor > Home Fragrances > Candles"),
    (476, ""),
    (480, ""),
    (487, "Electronics > Communications > Telephony > Mobile Phones"),
    (490, ""),
    (498, ""),
    (499, "Home & Garden > Kitchen & Dining > Kitchen Tools & Utensils > Kitchen Knives"),
    (509, "Food, Beverages & Tobacco > Food Items > Candy & Chocolate"),
    (514, "Apparel & Accessories > Shoes"),
    (528, "Electronics > Communications > Telephony > Corded Phones"),
    (531, "Apparel & Accessories > Jewelry > Watches"),
    (540, ""),
    (543, "Sporting Goods > Exercise & Fitness > Weight Lifting > Free Weights"),
    (548, "Furniture > Entertainment Centers & TV Stands"),
    (554, ""),
    (555, ""),
    (563, "Office Supplies > Office Instruments > Writing & Drawing Instruments > Pens & Pencils > Pens"),
    (564, "Furniture > Beds & Accessories > Beds & Bed Frames"),
    (569, ""),
    (571, ""),
    (576, ""),
    (582, ""),
    (584, "Apparel & Accessories > Clothing Accessories > Hair Accessories"),
    (588, ""),
    (595, ""),
    (596, "Hardware > Tools > Axes"),
    (601, "Apparel & Accessories > Clothing > Skirts"),
    (603, ""),
    (605, "Electronics > Audio > Audio Players & Recorders > MP3 Players"),
    (606, "Home & Garden > Household Appliances > Laundry Appliances > Irons & Ironing Systems"),
    (608, "Apparel & Accessories > Clothing > Pants"),
    (617, "Apparel & Accessories > Clothing > Uniforms"),
    (619, "Home & Garden > Lighting Accessories > Lamp Shades"),
    (630, "Apparel & Accessories > Shoes"),
    (631, "Health & Beauty > Personal Care > Cosmetics > Skin Care > Lotion & Moisturizer"),
    (632, "Electronics > Audio > Audio Components > Speakers"),
    (638, "Apparel & Accessories > Clothing > Swimwear"),
    (639, "Apparel & Accessories > Clothing > Swimwear"),
    (653, ""),
    (654, ""),
    (655, "Apparel & Accessories > Clothing > Skirts"),
    (660, ""),
    (673, "Electronics > Electronics Accessories > Computer Components > Input Devices > Mice & Trackballs"),
    (674, "Home & Garden > Household Supplies > Pest Control > Pest Control Traps"),
    (675, ""),
    (681, "Office Supplies > General Office Supplies > Paper Products > Notebooks & Notepads"),
    (686, ""),
    (688, ""),
    (694, ""),
    (697, "Apparel & Accessories > Clothing > Sleepwear & Loungewear > Pajamas"),
    (699, "Arts & Entertainment > Hobbies & Creative Arts > Musical Instruments > Woodwinds"),
    (704, ""),
    (706, ""),
    (707, ""),
    (708, ""),
    (709, "Office Supplies > Filing & Organization > Desk Organizers"),
    (713, "Electronics > Print, Copy, Scan & Fax > Printers, Copiers & Fax Machines"),
    (721, "Home & Garden > Linens & Bedding > Bedding > Pillows"),
    (723, ""),
    (729, ""),
    (735, "Apparel & Accessories > Clothing > Outerwear > Rain Suits"),
    (742, "Electronics > Print, Copy, Scan & Fax > Printers, Copiers & Fax Machines"),
    (760, "Home & Garden > Kitchen & Dining > Kitchen Appliances > Refrigerators"),
    (761, "Electronics > Electronics Accessories > Remote Controls"),
    (762, ""),
    (763, ""),
    (764, ""),
    (770, "Apparel & Accessories > Shoes"),
    (774, "Apparel & Accessories > Shoes"),
    (779, ""),
    (783, "Hardware > Hardware Accessories > Hardware Fasteners > Screws"),
    (
        786,
        "Arts & Entertainment > Hobbies & Creative Arts > Arts & Crafts > Art & Crafting Tools > Textile Craft Machines > Sewing Machines",
    ),
    (790, ""),
    (791, ""),
    (796, ""),
    (797, "Sporting Goods > Outdoor Recreation > Camping & Hiking > Sleeping Bags"),
    (799, ""),
    (803, ""),
    (804, "Home & Garden > Bathroom Accessories > Soap & Lotion Dispensers"),
    (808, "Apparel & Accessories > Clothing Accessories > Hats"),
    (809, "Home & Garden > Kitchen & Dining > Tableware > Dinnerware > Bowls"),
    (814, "Vehicles & Parts > Vehicles > Watercraft > Motor Boats"),
    (817, "Vehicles & Parts > Vehicles > Motor Vehicles > Cars, Trucks & Vans"),
    (820, ""),
    (824, "Apparel & Accessories > Clothing Accessories > Scarves & Shawls"),
    (829, ""),
    (836, "Apparel & Accessories > Clothing Accessories > Sunglasses"),
    (837, "Apparel & Accessories > Clothing Accessories > Sunglasses"),
    (838, "Health & Beauty > Personal Care > Cosmetics > Skin Care > Sunscreen"),
    (839, ""),
    (842, "Apparel & Accessories > Clothing > Swimwear"),
    (850, "Toys & Games > Toys > Dolls, Playsets & Toy Figures > Stuffed Animals"),
    (859, "Home & Garden > Kitchen & Dining > Kitchen Appliances > Toasters & Grills > Toasters"),
    (861, "Hardware > Plumbing > Plumbing Fixtures > Toilets & Bidets"),
    (866, "Vehicles & Parts > Vehicles > Motor Vehicles"),
    (869, "Apparel & Accessories > Clothing > Outerwear > Coats & Jackets"),
    (874, ""),
    (894, "Furniture > Cabinets & Storage > Armoires & Wardrobes"),
    (895, ""),
    (896, "Hardware > Plumbing > Plumbing Fixtures > Sinks > Bathroom Sinks"),
    (902, ""),
    (906, "Apparel & Accessories > Clothing Accessories > Neckties"),
    (907, "Food, Beverages & Tobacco > Beverages > Alcoholic Beverages > Wine"),
    (909, "Home & Garden > Kitchen & Dining > Cookware & Bakeware > Cookware > Woks"),
    (910, "Home & Garden > Kitchen & Dining > Kitchen Tools & Utensils"),
    (913, ""),
    (915, ""),
    (916, ""),
    (921, "Media > Books"),
    (923, "Home & Garden > Kitchen & Dining > Tableware > Dinnerware > Plates"),
    (925, "Food, Beverages & Tobacco > Food Items > Soups & Broths"),
    (927, "Food, Beverages & Tobacco > Food Items > Bakery > Cakes & Dessert Bars"),
    (928, "Food, Beverages & Tobacco > Food Items > Frozen Desserts & Novelties > Ice Cream & Frozen Yogurt"),
    (929, "Food, Beverages & Tobacco > Food Items > Frozen Desserts & Novelties > Ice Pops"),
    (930, "Food, Beverages & Tobacco > Food Items > Bakery > Breads & Buns"),
    (933, "Food, Beverages & Tobacco > Food Items > Prepared Foods"),
    (934, "Food, Beverages & Tobacco > Food Items > Prepared Foods"),
    (935, "Food, Beverages & Tobacco > Food Items > Prepared Foods"),
    (
        939,
        "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Vegetables > Squashes & Gourds",
    ),
    (
        941,
        "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Vegetables > Squashes & Gourds",
    ),
    (945, "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Vegetables > Peppers"),
    (948, "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Fruits > Apples"),
    (949, "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Fruits > Berries"),
    (
        951,
        "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Fruits > Citrus Fruits > Lemons",
    ),
    (952, "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Fruits > Figs"),
    (955, "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Fruits"),
    (958, ""),
    (959, "Food, Beverages & Tobacco > Food Items > Prepared Foods"),
    (960, "Food, Beverages & Tobacco > Food Items > Condiments & Sauces"),
    (962, "Food, Beverages & Tobacco > Food Items > Prepared Foods"),
    (963, "Food, Beverages & Tobacco > Food Items > Prepared Foods"),
    (964, "Food, Beverages & Tobacco > Food Items > Prepared Foods"),
    (965, "Food, Beverages & Tobacco > Food Items > Prepared Foods"),
    (966, "Food, Beverages & Tobacco > Beverages > Alcoholic Beverages > Wine"),
    (967, "Food, Beverages & Tobacco > Beverages > Coffee"),
    (968, "Home & Garden > Kitchen & Dining > Tableware > Drinkware > Coffee & Tea Cups"),
];

fn main() -> Result<()> {
    let dir = tandem_models::fetch::ensure(known_model("minilm")?)?;
    let encoder = ModelEncoder::load(&dir, BackendChoice::Cpu, "minilm")?;
    let cache = tandem_models::fetch::cache_root()?;
    let taxonomy = EmbeddedTaxonomy::load_or_build(&encoder, Some(&cache))?;
    let classes = imagenet_classes();
    let names: Vec<&str> = PRODUCT_CLASSES.map(|c| classes[c]).collect();
    let vectors = encoder.encode(&names).context("embedding the class names")?;
    println!("# ImageNet class\tGoogle product taxonomy path\t(made by ebrm/examples/make_imagenet_categories.rs)");
    for (class, vector) in PRODUCT_CLASSES.zip(&vectors) {
        let path = match OVERRIDES.iter().find(|(c, _)| *c == class) {
            Some((_, path)) => (!path.is_empty()).then(|| path.to_string()),
            None => taxonomy
                .nearest_matching(vector, |c| names_the_product(c.path, classes[class]))
                .filter(|(_, cos)| *cos >= MIN_COSINE)
                .map(|(c, _)| c.path.to_string()),
        };
        if let Some(path) = &path {
            anyhow::ensure!(
                tandem_ebrm::entities::taxonomy::find_path(path).is_some(),
                "class {class}: '{path}' is not in the taxonomy"
            );
            println!("{class}\t{path}");
        }
        if std::env::var_os("SHOW_ALL").is_some() {
            eprintln!("{class}\t{}\t{path:?}", classes[class]);
        }
    }
    Ok(())
}

/// Whether a taxonomy path names the product itself, not a part or accessory of it, for an
/// ImageNet class name.
fn names_the_product(path: &str, class_name: &str) -> bool {
    // Below the top level: "Apparel & Accessories" is a department, not an accessory.
    let below_top = path.split_once(" > ").map_or("", |(_, rest)| rest);
    let class_name = class_name.to_lowercase();
    PART_WORDS.iter().all(|w| !below_top.contains(w) || class_name.contains(&w.to_lowercase()))
}
