//! The synthetic catalogue's words: categories with their topic words, generic words,
//! and made-up names.

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub const CATEGORIES: [(&str, [&str; 8]); 24] = [
    (
        "travel",
        [
            "trip",
            "hotel",
            "beach",
            "itinerary",
            "flight",
            "island",
            "backpacking",
            "city",
        ],
    ),
    (
        "food",
        [
            "recipe", "dinner", "street", "noodles", "dessert", "spicy", "brunch", "bakery",
        ],
    ),
    (
        "fitness",
        [
            "workout", "gym", "squat", "cardio", "stretch", "protein", "running", "yoga",
        ],
    ),
    (
        "makeup",
        [
            "lipstick",
            "foundation",
            "eyeliner",
            "palette",
            "blush",
            "contour",
            "brow",
            "primer",
        ],
    ),
    (
        "fashion",
        [
            "outfit",
            "jacket",
            "denim",
            "sneakers",
            "vintage",
            "streetwear",
            "dress",
            "layering",
        ],
    ),
    (
        "pets",
        [
            "puppy", "kitten", "grooming", "training", "leash", "aquarium", "adoption", "treats",
        ],
    ),
    (
        "tech",
        [
            "laptop",
            "phone",
            "review",
            "charger",
            "keyboard",
            "gadget",
            "benchmark",
            "setup",
        ],
    ),
    (
        "gaming",
        [
            "console",
            "speedrun",
            "boss",
            "strategy",
            "controller",
            "esports",
            "quest",
            "indie",
        ],
    ),
    (
        "music",
        [
            "guitar", "playlist", "concert", "vinyl", "piano", "cover", "lyrics", "festival",
        ],
    ),
    (
        "movies",
        [
            "trailer",
            "director",
            "scene",
            "sequel",
            "cinema",
            "soundtrack",
            "plot",
            "actor",
        ],
    ),
    (
        "books",
        [
            "novel",
            "chapter",
            "author",
            "library",
            "poetry",
            "fantasy",
            "memoir",
            "bookshelf",
        ],
    ),
    (
        "home",
        [
            "decor",
            "sofa",
            "lamp",
            "minimalist",
            "storage",
            "rug",
            "renovation",
            "kitchen",
        ],
    ),
    (
        "garden",
        [
            "plants",
            "seeds",
            "succulent",
            "compost",
            "balcony",
            "flowers",
            "pruning",
            "soil",
        ],
    ),
    (
        "parenting",
        [
            "toddler", "bedtime", "stroller", "newborn", "toys", "school", "snacks", "routine",
        ],
    ),
    (
        "finance",
        [
            "budget",
            "savings",
            "stocks",
            "invest",
            "credit",
            "salary",
            "dividend",
            "retirement",
        ],
    ),
    (
        "cars",
        [
            "engine",
            "sedan",
            "electric",
            "roadtrip",
            "tires",
            "detailing",
            "suv",
            "mileage",
        ],
    ),
    (
        "sports",
        [
            "football",
            "basketball",
            "tennis",
            "match",
            "league",
            "goal",
            "coach",
            "highlights",
        ],
    ),
    (
        "photography",
        [
            "camera", "lens", "portrait", "sunset", "editing", "film", "tripod", "exposure",
        ],
    ),
    (
        "art",
        [
            "painting",
            "sketch",
            "canvas",
            "watercolor",
            "gallery",
            "mural",
            "ink",
            "sculpture",
        ],
    ),
    (
        "crafts",
        [
            "knitting",
            "sewing",
            "pottery",
            "embroidery",
            "yarn",
            "handmade",
            "pattern",
            "resin",
        ],
    ),
    (
        "skincare",
        [
            "serum",
            "sunscreen",
            "moisturizer",
            "acne",
            "cleanser",
            "retinol",
            "toner",
            "mask",
        ],
    ),
    (
        "coffee",
        [
            "espresso", "latte", "beans", "grinder", "roast", "pourover", "cafe", "barista",
        ],
    ),
    (
        "hiking",
        [
            "trail",
            "summit",
            "boots",
            "camping",
            "forest",
            "backpack",
            "waterfall",
            "ridge",
        ],
    ),
    (
        "cooking",
        [
            "pan", "knife", "baking", "sauce", "grill", "oven", "spices", "ferment",
        ],
    ),
];
pub const GENERIC: [&str; 24] = [
    "best", "new", "my", "guide", "tips", "easy", "ultimate", "daily", "honest", "quick", "top",
    "simple", "favorite", "weekend", "budget", "first", "real", "cozy", "perfect", "hidden",
    "classic", "modern", "small", "big",
];

/// A pronounceable made-up word (names of entities).
pub fn pseudo_word(rng: &mut ChaCha8Rng) -> String {
    const ONSETS: [&str; 16] = [
        "b", "k", "l", "m", "n", "r", "s", "t", "v", "z", "br", "dr", "st", "pl", "gr", "sh",
    ];
    const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "ai"];
    const CODAS: [&str; 6] = ["", "n", "r", "x", "l", "s"];
    let syllables = rng.random_range(2..=3);
    let mut w = String::new();
    for _ in 0..syllables {
        w.push_str(ONSETS.choose(rng).copied().unwrap_or("k"));
        w.push_str(VOWELS.choose(rng).copied().unwrap_or("a"));
    }
    w.push_str(CODAS.choose(rng).copied().unwrap_or(""));
    w
}
