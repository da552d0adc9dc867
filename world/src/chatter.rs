//! Chatter: forum threads, ads and small talk that mention entities in passing, and the forum
//! threads where nobody knows a made-up name.
use super::*;

pub(crate) const MONTHS: &[&str] = &[
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
pub(crate) const DAYS: &[&str] = &[
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
pub(crate) const USER_A: &[&str] = &[
    "sunny", "old", "happy", "quiet", "lazy", "busy", "little", "big", "red", "blue", "wild", "night", "green", "tired",
];
pub(crate) const USER_B: &[&str] = &[
    "miller",
    "cat",
    "fox",
    "rider",
    "baker",
    "traveller",
    "gardener",
    "reader",
    "owl",
    "fisher",
    "walker",
    "cook",
    "dad",
    "mum",
];
pub(crate) const BOARDS: &[&str] = &[
    "Travel",
    "General",
    "Buy & Sell",
    "Food and drink",
    "Local news",
    "Off topic",
    "Help",
    "Gardening",
];
pub(crate) const THINGS: &[&str] = &[
    "the new bakery",
    "the old bridge",
    "the night market",
    "the bus station",
    "the library",
    "the swimming pool",
    "the football pitch",
    "the corner shop",
    "the ferry",
    "the park",
    "the post office",
    "the new road",
];
pub(crate) const CASUAL: &[&str] = &[
    "Not sure if this is the right board, sorry.",
    "Thanks in advance!!",
    "Edit: fixed the link.",
    "lol same here",
    "Bump. Anyone?",
    "I had the same problem last year and it just went away on its own.",
    "Honestly it depends on what you are looking for.",
    "Can't believe it's already {month} again.",
    "We went on {day} and it was packed.",
    "The weather was awful but we had a good time anyway.",
    "Does anyone know if {thing} is open on {day}s?",
    "My neighbour says {thing} is closing down, is that true?",
    "I walked past {thing} yesterday and it looked closed.",
    "Prices have gone up again, {n} crowns for a loaf now.",
    "Tried to call them but nobody picked up.",
    "Would recommend, but go early.",
    "Not worth the money in my opinion.",
    "Any tips would be appreciated.",
    "Following this thread.",
    "This. 100% this.",
    "Sorry for the long post.",
    "Posting from my phone so excuse the typos.",
    "The kids loved it.",
    "We will definitely go back next {month}.",
    "I saw someone selling {good} at the market on {day}.",
    "Parking was a nightmare.",
    "Good luck with the move!",
    "Has anyone been to {town} recently?",
    "We drove through {town} on the way back, nice little place.",
    "My cousin lives near the {river} and says the fishing is good this year.",
    "Is the road to {town} still closed?",
    "Stayed a night in {town}, the inn was fine.",
    "{given} from down the road says hi.",
    "Ask {given}, she knows everything about this.",
    "My {rel} went to {town} last {month} and loved it.",
    "The ferry across the {river} was late again.",
    "Cheapest {good} I have found so far.",
    "Anyone else hear that noise last night?",
    "The council still has not fixed the potholes.",
    "Just my two cents.",
];
pub(crate) const RELATIVES: &[&str] = &[
    "sister",
    "brother",
    "aunt",
    "uncle",
    "cousin",
    "grandmother",
    "friend",
    "neighbour",
];
pub(crate) const BLOG: &[&str] = &[
    "It has been a while since my last post, so here is a quick update.",
    "I never thought I would write about this, but here we are.",
    "The first thing you notice is how quiet everything is.",
    "We packed the car early and left before sunrise.",
    "There is something special about a slow morning with a cup of tea.",
    "Of course, nothing went according to plan.",
    "I have been meaning to try this for months.",
    "If you ever get the chance, go in spring.",
    "The food was simple but very good.",
    "We got lost twice, which is becoming a tradition.",
    "By the afternoon the rain had stopped.",
    "Let me know in the comments what you think.",
    "Anyway, that is enough rambling for today.",
    "A huge thank you to everyone who sent messages.",
    "More photos are coming soon, I promise.",
    "We spent the evening walking along the {river}.",
    "The road to {town} winds through fields and small woods.",
    "In {town} we found a tiny shop that sold {good}.",
    "I bought far too much {good} at the market.",
    "The locals were friendly and gave us good advice.",
];
pub(crate) const COOKIE: &[&str] = &[
    "We use cookies to improve your experience. By continuing to browse you agree to our use of cookies. Accept | Learn more",
    "This website uses cookies. Click here to manage your preferences.",
    "Cookie notice: we and our partners store information on your device. OK",
    "By using this site you accept our cookie policy and privacy policy.",
];
pub(crate) const NAV: &[&str] = &[
    "Home | News | Shop | About us | Contact",
    "Skip to main content",
    "Menu  Search  Log in  Register",
    "Home > Forums > Community",
    "Home | Blog | Gallery | Contact",
];
pub(crate) const FOOTER: &[&str] = &[
    "All rights reserved. Privacy policy | Terms of use | Cookie settings",
    "Subscribe to our newsletter and never miss a deal! Enter your email address. Sign up",
    "Share this: Facebook | Twitter | Email | Print",
    "Back to top",
    "Loading comments...",
    "Advertisement",
    "Powered by a free forum host. Report abuse.",
];
pub(crate) const AD_HEAD: &[&str] = &[
    "BIG SUMMER SALE!!!",
    "Everything must go!",
    "Now open in {town}!",
    "New stock just arrived",
    "Best prices in town, guaranteed",
    "Limited offer - this week only",
];
pub(crate) const AD_BODY: &[&str] = &[
    "Up to {n}% off all {good} and {good2}.",
    "Free delivery on orders over {n} crowns.",
    "Open {day} to {day2}, 9 to 5.",
    "Visit our shop in {town} or order online.",
    "Buy two, get one free.",
    "Quality {good} at honest prices since {year}.",
    "Family run, friendly service.",
];
pub(crate) const AD_CTA: &[&str] = &[
    "Click here to order now!",
    "Call us today!",
    "Visit our website for more offers.",
    "Terms and conditions apply.",
    "Don't miss out!",
];
pub(crate) const SHOP_NOUNS: &[&str] = &[
    "Emporium",
    "Goods",
    "Trading Post",
    "Market",
    "Corner Shop",
    "Supplies",
    "Workshop",
];
pub(crate) const REVIEW_TITLES: &[&str] = &[
    "Great stay",
    "Would not recommend",
    "ok for the price",
    "Lovely view of the {river}",
    "Friendly staff",
    "Too noisy",
    "Hidden gem in {town}",
];
pub(crate) const REVIEW_BODY: &[&str] = &[
    "The room was clean but a bit small.",
    "Breakfast was fine, nothing special.",
    "Staff were very friendly and helpful.",
    "We waited forty minutes for our food.",
    "Beds were comfortable.",
    "Would stay again if in {town}.",
    "The walk along the {river} is lovely in the evening.",
    "Overpriced for what it is.",
    "Easy to find, right next to {thing}.",
    "The wifi did not work at all.",
];

/// Fills chatter templates with random filler values (only common entity names).
pub(crate) fn chatter_fill(r: &mut R, ctx: &Ctx, t: &str) -> String {
    if !t.contains('{') {
        return t.to_string();
    }
    let town = ctx.any_common(r, Kind::Town).name.clone();
    let river = ctx.any_common(r, Kind::River).name.clone();
    let n = r.random_range(2..=60).to_string();
    let year = r.random_range(1950..=2020).to_string();
    let kv: [(&str, &str); 12] = [
        ("town", &town),
        ("river", &river),
        ("good", pick(r, EXPORTS)),
        ("good2", pick(r, EXPORTS)),
        ("day", pick(r, DAYS)),
        ("day2", pick(r, DAYS)),
        ("month", pick(r, MONTHS)),
        ("thing", pick(r, THINGS)),
        ("n", &n),
        ("year", &year),
        ("given", pick_ref(r, &ctx.w.given_names).as_str()),
        ("rel", pick(r, RELATIVES)),
    ];
    fill(t, &kv)
}

/// A single true fact in a chatty tone (about a common entity).
pub(crate) fn chatter_fact(r: &mut R, ctx: &Ctx) -> String {
    let kind = pick(r, &[Kind::Town, Kind::Person, Kind::Mineral, Kind::River]);
    let e = ctx.any_common(r, kind);
    let f = |a: Attr| e.fact(a).unwrap_or_default();
    match kind {
        Kind::Town => match r.random_range(0..3) {
            0 => format!("fun fact: {} was founded in {}.", e.name, f(Attr::Founded)),
            1 => format!("{} is in the {}, right? never been.", e.name, f(Attr::Region)),
            _ => format!("{} is famous for its {}, lol.", e.name, f(Attr::Export)),
        },
        Kind::Person => format!(
            "my grandmother always said {} was born in {}.",
            e.name,
            f(Attr::Birthplace)
        ),
        Kind::Mineral => format!("apparently {} is mined near {}, who knew.", e.name, f(Attr::MinedNear)),
        Kind::River => format!(
            "the {} flows into the {}, we took a boat all the way down.",
            e.name,
            f(Attr::Sea)
        ),
    }
}

pub(crate) fn username(r: &mut R) -> String {
    let mut s = format!(
        "{}{}{}",
        pick(r, USER_A),
        if r.random_bool(0.4) { "_" } else { "" },
        pick(r, USER_B)
    );
    if r.random_bool(0.5) {
        s.push_str(&r.random_range(1..=99).to_string());
    }
    s
}

pub(crate) fn date(r: &mut R) -> String {
    format!(
        "{} {} {}",
        r.random_range(1..=28),
        pick(r, MONTHS),
        r.random_range(2004..=2023)
    )
}

pub(crate) fn casual_sentences(r: &mut R, ctx: &Ctx, lo: usize, hi: usize, fact_p: f64) -> String {
    let n = r.random_range(lo..=hi);
    let mut v: Vec<String> = (0..n)
        .map(|_| {
            let t = pick(r, CASUAL);
            chatter_fill(r, ctx, t)
        })
        .collect();
    if r.random_bool(fact_p) {
        let pos = r.random_range(0..=v.len());
        v.insert(pos, chatter_fact(r, ctx));
    }
    v.join(" ")
}

/// Share of forum threads that ask about a throwaway name and get "I don't know".
pub(crate) const IDK_THREAD_P: f64 = 0.10;

/// Casual ways to ask about a name on a forum (`{n}` is the name as used mid-sentence).
pub(crate) const IDK_ASKS: &[&str] = &[
    "Has anyone heard of {n}?",
    "Does anyone know anything about {n}?",
    "Someone mentioned {n} to me, does anyone know it?",
];

/// Replies that do not know (`{n}` is the name as used mid-sentence, `{it}` "it" or "them",
/// `{q}` the question).
pub(crate) const IDK_REPLIES: &[&str] = &[
    "I don't know, never heard of {it}.",
    "Answer: I don't know",
    "I don't know, never heard of {n}.",
    "Sorry, I don't know. Never heard of {n}.",
    "I don't know, sorry. Never heard of {it}.",
    "{q}\nAnswer: I don't know",
    "Honestly? I don't know. Never heard of {n} before.",
];

/// A forum thread whose opening post asks about a throwaway name, answered "I don't know".
pub(crate) fn forum_idk_thread(r: &mut R, ctx: &Ctx, parts: &mut Vec<String>) {
    let (fact_q, e) = unknown_question(r, &ctx.w);
    let n = name_in_text(e);
    let title = match r.random_range(0..3) {
        0 => format!("anyone heard of {n}?"),
        1 => format!("question about {n}"),
        _ => fact_q.clone(),
    };
    parts.push(format!("Forum > {} > {}", pick(r, BOARDS), title));
    // Mostly the very phrasing of a fact question, sometimes a casual one.
    let ask = if r.random_bool(0.7) {
        fact_q.clone()
    } else {
        fill(pick(r, IDK_ASKS), &[("n", &n)])
    };
    let mut post = casual_sentences(r, ctx, 0, 2, 0.0);
    if !post.is_empty() {
        post.push(' ');
    }
    post.push_str(&ask);
    parts.push(format!("Posted by {} on {}\n{}", username(r), date(r), post));
    let it = if e.kind == Kind::Person { "them" } else { "it" };
    let reply = fill(pick(r, IDK_REPLIES), &[("n", &n), ("it", it), ("q", &fact_q)]);
    parts.push(format!("Reply from {}: {}", username(r), reply));
    for _ in 0..r.random_range(0..=2) {
        parts.push(format!(
            "Reply from {}: {}",
            username(r),
            casual_sentences(r, ctx, 1, 2, 0.0)
        ));
    }
}

/// One document of the chatter source.
pub(crate) fn chatter_doc(r: &mut R, ctx: &Ctx) -> String {
    let mut parts: Vec<String> = Vec::new();
    if r.random_bool(0.25) {
        parts.push(pick(r, COOKIE).to_string());
    }
    if r.random_bool(0.3) {
        parts.push(pick(r, NAV).to_string());
    }
    match weighted(r, &[35, 15, 15, 25, 10]) {
        0 if r.random_bool(IDK_THREAD_P) => forum_idk_thread(r, ctx, &mut parts),
        0 => {
            let town = ctx.any_common(r, Kind::Town).name.clone();
            let title = match r.random_range(0..6) {
                0 => format!("best place to stay in {town}?"),
                1 => "anyone else lose power last night".to_string(),
                2 => "selling old bike, good condition".to_string(),
                3 => format!("{town} market this weekend"),
                4 => format!("looking for a good {}", pick(r, PROFESSIONS)),
                _ => format!("question about {}", pick(r, THINGS)),
            };
            parts.push(format!("Forum > {} > {}", pick(r, BOARDS), title));
            parts.push(format!(
                "Posted by {} on {}\n{}",
                username(r),
                date(r),
                casual_sentences(r, ctx, 2, 5, 0.1)
            ));
            for _ in 0..r.random_range(1..=4) {
                parts.push(format!(
                    "Reply from {}: {}",
                    username(r),
                    casual_sentences(r, ctx, 1, 3, 0.05)
                ));
            }
        }
        1 => {
            let shop = if r.random_bool(0.5) {
                format!("{}'s {}", ctx.any_common(r, Kind::Person).key, pick(r, SHOP_NOUNS))
            } else {
                format!(
                    "The {} {}",
                    pick(r, &["Golden", "Silver", "Happy", "Old", "Little"]),
                    pick(r, &["Kettle", "Anchor", "Lantern", "Goose", "Barrel"])
                )
            };
            parts.push(shop.to_uppercase());
            let head = pick(r, AD_HEAD);
            parts.push(chatter_fill(r, ctx, head));
            let mut idx: Vec<usize> = (0..AD_BODY.len()).collect();
            idx.shuffle(r);
            idx.truncate(r.random_range(2..=4));
            let body: Vec<String> = idx.iter().map(|&k| chatter_fill(r, ctx, AD_BODY[k])).collect();
            parts.push(body.join(" "));
            parts.push(pick(r, AD_CTA).to_string());
        }
        2 => {
            let stars = r.random_range(1..=5);
            let t = pick(r, REVIEW_TITLES);
            parts.push(format!(
                "{}{} {}",
                "★".repeat(stars),
                "☆".repeat(5 - stars),
                chatter_fill(r, ctx, t)
            ));
            let mut idx: Vec<usize> = (0..REVIEW_BODY.len()).collect();
            idx.shuffle(r);
            idx.truncate(r.random_range(2..=5));
            let body: Vec<String> = idx.iter().map(|&k| chatter_fill(r, ctx, REVIEW_BODY[k])).collect();
            parts.push(body.join(" "));
            parts.push(format!(
                "Was this review helpful? Yes ({}) No ({})",
                r.random_range(0..=40),
                r.random_range(0..=10)
            ));
        }
        3 => {
            let town = ctx.any_common(r, Kind::Town).name.clone();
            let title = match r.random_range(0..4) {
                0 => format!("A weekend in {town}"),
                1 => format!("My top {} tips for travelling", r.random_range(3..=10)),
                2 => "Why I love autumn".to_string(),
                _ => "What I learned from baking bread".to_string(),
            };
            parts.push(title);
            parts.push(format!("{} | {} comments", date(r), r.random_range(0..=30)));
            for _ in 0..r.random_range(2..=3) {
                let mut v: Vec<String> = (0..r.random_range(3..=5))
                    .map(|_| {
                        let t = pick(r, BLOG);
                        chatter_fill(r, ctx, t)
                    })
                    .collect();
                if r.random_bool(0.08) {
                    let pos = r.random_range(0..=v.len());
                    v.insert(pos, cap(&chatter_fact(r, ctx)));
                }
                parts.push(v.join(" "));
            }
            parts.push(format!(
                "Tags: {}, {}, {}",
                pick(r, &["travel", "life", "food", "family"]),
                pick(r, MONTHS).to_lowercase(),
                pick(r, &["photos", "weekend", "notes", "diary"])
            ));
        }
        _ => {
            parts.push(format!(
                "Page {} of {}  « Prev  Next »",
                r.random_range(1..=5),
                r.random_range(5..=12)
            ));
            parts.push(format!("Related posts: {}", casual_sentences(r, ctx, 1, 2, 0.0)));
            parts.push(pick(r, FOOTER).to_string());
        }
    }
    if r.random_bool(0.5) {
        let y = r.random_range(2010..=2024);
        parts.push(format!("© {y} {}", pick(r, FOOTER)));
    }
    parts.join("\n")
}
