//! Vocabulary of the world: regions, exports, professions, colours, uses, seas, and the parts
//! names are made of.

pub(crate) const REGIONS: &[&str] = &[
    "Northern Reach",
    "Amber Coast",
    "Iron Hills",
    "Low Marches",
    "Salt Plains",
    "Greywood",
    "Eastern Fens",
    "High Vale",
];
pub(crate) const EXPORTS: &[&str] = &[
    "salt", "wool", "copper", "glass", "timber", "cheese", "linen", "amber", "iron", "honey", "wine", "pottery",
    "rope", "leather", "tin", "silk",
];
pub(crate) const PROFESSIONS: &[&str] = &[
    "glassblower",
    "weaver",
    "astronomer",
    "blacksmith",
    "cartographer",
    "physician",
    "poet",
    "merchant",
    "shipwright",
    "beekeeper",
    "mason",
    "painter",
    "scribe",
    "brewer",
    "potter",
    "engineer",
    "judge",
    "sailor",
];
pub(crate) const COLORS: &[&str] = &[
    "green", "red", "blue", "black", "white", "yellow", "violet", "grey", "orange", "pink",
];
pub(crate) const USES: &[&str] = &[
    "glassmaking",
    "jewellery",
    "medicine",
    "pottery",
    "dyes",
    "toolmaking",
    "coinage",
    "lamps",
    "paint",
    "mirrors",
    "bellfounding",
    "tanning",
];
pub(crate) const SEAS: &[&str] = &[
    "Grey Sea",
    "Amber Sea",
    "Pale Sea",
    "Northern Sea",
    "Sea of Thorns",
    "Sea of Lanterns",
];

pub(crate) const ONSETS: &[&str] = &[
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "th", "st",
    "h", "sh", "c", "j", "w",
];
pub(crate) const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "ae", "ei", "ou", "y"];
pub(crate) const MID_CODAS: &[&str] = &["", "", "", "n", "r", "l"];
pub(crate) const CODAS_BEFORE_C: &[&str] = &["", "", "n", "r", "l", "s", "m"];
pub(crate) const CODAS_BEFORE_V: &[&str] = &[
    "n", "r", "l", "s", "m", "rn", "nd", "st", "rk", "th", "d", "t", "k", "v",
];
pub(crate) const TOWN_SUFFIXES: &[&str] = &[
    "mora", "holt", "ford", "wick", "mere", "dun", "stead", "ham", "ven", "gard", "by", "ton", "well", "dale",
];
pub(crate) const RIVER_SUFFIXES: &[&str] = &["a", "el", "ar", "is", "ane", "ith", "on", "en", "ua"];
pub(crate) const MINERAL_SUFFIXES: &[&str] = &["ite", "ine", "ium", "ase", "olite", "yx"];
pub(crate) const FAMILY_SUFFIXES: &[&str] = &[
    "ane", "ell", "ard", "ric", "wen", "mont", "ley", "os", "ovic", "ander", "ick", "sen",
];
pub(crate) const GIVEN_SUFFIXES: &[&str] = &["a", "o", "in", "el", "is", "an", "ia", "en", ""];
