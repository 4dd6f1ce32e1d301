//! `ledger-bench id-filter`: what the ledger thread pays per new id in the id filter, and how
//! often the filter says "maybe" for an id it never saw (each such answer costs a lookup in
//! the file), at a node's id counts. Two filters per count: one grown by doubling layers as
//! it took the ids (a node that ran that long without a restart), and one sized for them
//! (`IdFilter::size_for`, as the filter built at start-up is). Keys are formatted into one
//! reused buffer; the time formatting alone takes is printed beside, to subtract.

use super::{number, value, USAGE};
use ledger::core::id_filter::IdFilter;
use std::fmt::Write;
use std::time::Instant;

/// Most ids one filter may take here (its keys are formatted, not kept: RAM is the filter's).
const MAX_IDS: usize = 64 << 20;
/// Never-seen ids probed (then inserted) after the fill: the new-id cost and false positives.
const PROBED: usize = 1 << 20;
/// Devices the ids are spread over.
const DEVICES: usize = 512;

pub struct IdFilterOpts {
    ids: Vec<usize>,
}

pub fn parse(args: &[String]) -> Result<IdFilterOpts, String> {
    let mut opts = IdFilterOpts { ids: vec![1 << 20, 8 << 20, 32 << 20] };
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        match flag {
            "--ids" => opts.ids = value(args, &mut i)?.split(',').map(|n| number::<usize>(flag, n.trim())).collect::<Result<_, _>>()?,
            other => return Err(format!("id-filter: unknown argument {other:?}\n\n{USAGE}")),
        }
        i += 1;
    }
    if opts.ids.is_empty() || opts.ids.iter().any(|&n| n == 0 || n > MAX_IDS) {
        return Err(format!("--ids: each count from 1 to {MAX_IDS}"));
    }
    Ok(opts)
}

fn key<'a>(buf: &'a mut String, prefix: &str, i: usize) -> &'a str {
    buf.clear();
    write!(buf, "{prefix}-{}:t{i}", i % DEVICES).expect("a String takes any write");
    buf
}

/// Nanoseconds per id to format `n` keys (the share of every figure below that is not the
/// filter's).
fn formatting(n: usize) -> f64 {
    let mut buf = String::new();
    let started = Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        bytes += key(&mut buf, "pos", i).len();
    }
    std::hint::black_box(bytes);
    started.elapsed().as_nanos() as f64 / n as f64
}

/// `sized`: as a node builds it at start-up, the file's ids in a sibling sized for them,
/// absorbed by the filter that takes the new ones; else one filter that grew as it took them.
fn measure(n: usize, sized: bool) {
    let mut filter = IdFilter::default();
    let mut buf = String::new();
    let started = Instant::now();
    if sized {
        let mut history = filter.sibling();
        history.size_for(n);
        for i in 0..n {
            history.insert(key(&mut buf, "pos", i));
        }
        filter.absorb(history);
    } else {
        for i in 0..n {
            filter.insert(key(&mut buf, "pos", i));
        }
    }
    let fill = started.elapsed().as_nanos() as f64 / n as f64;
    let mut maybe = 0;
    let started = Instant::now();
    for i in 0..PROBED {
        let key = key(&mut buf, "new", i);
        if filter.may_contain(key) {
            maybe += 1;
        }
        filter.insert(key);
    }
    let new_id = started.elapsed().as_nanos() as f64 / PROBED as f64;
    let fp = maybe as f64 * 100.0 / PROBED as f64;
    let (kind, mib) = (if sized { "sized" } else { "grown" }, filter.bytes() as f64 / f64::from(1 << 20));
    println!(
        "id-filter: {n} ids, {kind}: {fill:.1} ns per insert; a new id (may_contain, then insert) {new_id:.1} ns; {fp:.2}% false positives; {mib:.1} MiB"
    );
    println!("RESULT id_filter ids={n} filter={kind} insert_ns={fill:.1} new_id_ns={new_id:.1} false_positive_pct={fp:.2} mib={mib:.1}");
}

pub fn run(opts: &IdFilterOpts) -> Result<(), String> {
    for &n in &opts.ids {
        println!("id-filter: formatting a key alone: {:.1} ns", formatting(n.min(PROBED)));
        measure(n, false);
        measure(n, true);
    }
    Ok(())
}
