//! The library: the documents of each source, up to a byte budget.
use super::*;

/// Documents of one source until `budget` bytes; `skip` holds hashes of documents to avoid.
pub(crate) fn source_docs(
    r: &mut R,
    ctx: &Ctx,
    source: usize,
    budget: usize,
    with_rare: bool,
    skip: &HashSet<u64>,
) -> Vec<String> {
    let mut docs: Vec<String> = Vec::new();
    let mut bytes = 0usize;
    let push = |d: String, docs: &mut Vec<String>, bytes: &mut usize| {
        if !skip.contains(&fnv(&d)) {
            *bytes += d.len();
            docs.push(d);
        }
    };
    if source == 0 {
        if with_rare {
            for (i, e) in ctx.w.entities.iter().enumerate() {
                if e.rare {
                    let d = entity_article(r, ctx, i, true);
                    push(d, &mut docs, &mut bytes);
                }
            }
        }
        let mut order: Vec<usize> = ctx.common.values().flatten().copied().collect();
        'outer: loop {
            order.shuffle(r);
            for &i in &order {
                if bytes >= budget {
                    break 'outer;
                }
                let d = if r.random_bool(0.04) {
                    list_article(r, ctx)
                } else {
                    let full = r.random_bool(0.3);
                    entity_article(r, ctx, i, full)
                };
                push(d, &mut docs, &mut bytes);
            }
        }
    } else {
        while bytes < budget {
            let d = match source {
                1 => arithmetic_doc(r, ctx),
                2 => code_doc(r, ctx),
                _ => chatter_doc(r, ctx),
            };
            push(d, &mut docs, &mut bytes);
        }
    }
    docs.shuffle(r);
    docs
}
