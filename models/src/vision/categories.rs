//! ImageNet classes as Google product taxonomy paths: what a product photo's top classes say
//! about the product's category. `imagenet_product_categories.tsv` holds one line per class
//! (`class<TAB>path`), made by `ebrm/examples/make_imagenet_categories.rs` (nearest taxonomy
//! path by MiniLM, then reviewed corrections); classes that are not products (animals,
//! landscapes, buildings, ...) have no line. ebrm's tests check every path is in the taxonomy.

const TABLE: &str = include_str!("imagenet_product_categories.tsv");

/// The Google product taxonomy path of ImageNet class `class`, or None when the class is not
/// a product.
pub fn product_category(class: usize) -> Option<&'static str> {
    TABLE.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (id, path) = line.split_once('\t')?;
        (id.parse::<usize>().ok()? == class).then_some(path)
    })
}

#[cfg(test)]
mod tests {
    use super::product_category;

    #[test]
    fn products_have_a_category_and_animals_do_not() {
        assert_eq!(product_category(967), Some("Food, Beverages & Tobacco > Beverages > Coffee"));
        assert_eq!(product_category(770), Some("Apparel & Accessories > Shoes"));
        assert_eq!(product_category(285), None, "Egyptian cat");
        assert_eq!(product_category(1000), None);
        let mapped = (0..1000).filter(|&c| product_category(c).is_some()).count();
        assert!((300..600).contains(&mapped), "{mapped} classes mapped");
    }
}
