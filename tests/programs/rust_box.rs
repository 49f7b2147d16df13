//! Leaks through Rust's default (system) allocator, which calls malloc: Box::leak and
//! mem::forget of Vecs, in `#[inline(never)]` functions. Churns collections, all freed.
//!
//! Prints one JSON line: per leaking function the bytes and blocks it leaked.

use std::collections::HashMap;
use std::hint::black_box;

#[inline(never)]
fn leak_box() -> (usize, usize) {
    let (mut bytes, mut count) = (0, 0);
    for i in 0..6u8 {
        let b: Box<[u8; 2000]> = Box::new([i; 2000]);
        black_box(Box::leak(b));
        bytes += 2000;
        count += 1;
    }
    (bytes, count)
}

#[inline(never)]
fn leak_vec() -> (usize, usize) {
    let (mut bytes, mut count) = (0, 0);
    for i in 0..4usize {
        let v: Vec<u64> = Vec::with_capacity(300 + i);
        bytes += v.capacity() * std::mem::size_of::<u64>();
        count += 1;
        std::mem::forget(black_box(v));
    }
    (bytes, count)
}

#[inline(never)]
fn churn() {
    for round in 0..200 {
        let mut v: Vec<String> = Vec::new();
        let mut m: HashMap<usize, Vec<u8>> = HashMap::new();
        for i in 0..100 {
            v.push("x".repeat(10 + i + round % 7));
            m.insert(i, vec![0u8; 50 + i]);
        }
        black_box((&v, &m));
    }
}

fn main() {
    churn();
    let (box_bytes, box_count) = leak_box();
    let (vec_bytes, vec_count) = leak_vec();
    churn();
    println!(
        "{{\"sites\":{{\"leak_box\":{{\"bytes\":{box_bytes},\"count\":{box_count}}},\
         \"leak_vec\":{{\"bytes\":{vec_bytes},\"count\":{vec_count}}}}},\"not_leaking\":[\"churn\"]}}"
    );
}
