//! Small blocks in far memory (`krak run --allocator far`): the malloc family's requests
//! below the threshold are served from size classes carved out of arena spans, so a
//! program made of small blocks (an interpreter's objects, awk's arrays, node's glibc heap)
//! is far memory too.
//!
//! A span is 64 KiB of the arena, aligned to 64 KiB, holding blocks of one class; which
//! class a span holds is a byte per span in a table indexed by the span's place in the
//! arena, so `free` finds a block's class from its address alone. Each class has its own
//! lock, a free list threaded through the freed blocks (in far memory: freeing a block
//! writes its first word) and the unused end of its newest span, handed out in order so
//! that a fresh span is never touched ahead of use. Spans are never given back: a block
//! freed costs nothing until it is reused (its page evicted like any other). Requests above
//! the largest class are page runs ([`crate::far::Far::alloc`]).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use parking_lot::Mutex;

pub const SPAN_BYTES: usize = 64 << 10;
/// The largest block a class serves; larger ones are page runs.
pub const MAX_SMALL: usize = 32 << 10;
const CLASSES: [usize; 40] = [
    16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792,
    2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768,
];

#[derive(Debug, Default)]
struct Class {
    /// The first free block (0: none); each free block's first word is the next.
    free: usize,
    /// The unused end of the newest span: `[bump, bump_end)`.
    bump: usize,
    bump_end: usize,
}

#[derive(Debug)]
pub struct Small {
    base: usize,
    /// Per span of the arena: 0, or 1 + the class of its blocks.
    span_class: Box<[AtomicU8]>,
    classes: Vec<Mutex<Class>>,
    pub spans: AtomicU64,
    pub blocks: AtomicU64,
}

/// The class serving `size` bytes aligned to `align` (a power of two): for alignments above
/// 16, a power-of-two class of at least the alignment (blocks of such classes sit at
/// multiples of their size in aligned spans). None above the largest class.
fn class_of(size: usize, align: usize) -> Option<usize> {
    let size = size.max(1);
    let want = if align > 16 { size.max(align).checked_next_power_of_two()? } else { size };
    let i = CLASSES.partition_point(|&c| c < want);
    (i < CLASSES.len()).then_some(i)
}

impl Small {
    /// For an arena of `len` bytes at `base` (span-aligned or not: spans are aligned runs).
    pub fn new(base: usize, len: usize) -> Small {
        let spans = len.div_ceil(SPAN_BYTES) + 1;
        Small {
            base: base & !(SPAN_BYTES - 1),
            span_class: (0..spans).map(|_| AtomicU8::new(0)).collect(),
            classes: CLASSES.iter().map(|_| Mutex::new(Class::default())).collect(),
            spans: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
        }
    }

    fn span_index(&self, addr: usize) -> usize {
        (addr - self.base) / SPAN_BYTES
    }

    /// The class size of the block at `addr` (an arena address), or None when `addr` is not
    /// in a span of small blocks (a page run's).
    pub fn block_size(&self, addr: usize) -> Option<usize> {
        match self.span_class.get(self.span_index(addr))?.load(Relaxed) {
            0 => None,
            c => Some(CLASSES[c as usize - 1]),
        }
    }

    /// A block of at least `size` bytes aligned to `align`; `new_span` gives a fresh span
    /// (its address, SPAN_BYTES-aligned) or None when the arena is full. None also above
    /// the largest class (the caller makes a page run).
    pub fn alloc(&self, size: usize, align: usize, new_span: impl FnOnce() -> Option<usize>) -> Option<usize> {
        let i = class_of(size, align)?;
        let class_bytes = CLASSES[i];
        let mut c = self.classes[i].lock();
        let block = if c.free != 0 {
            let block = c.free;
            // SAFETY: a free block of this class, at least 16 bytes, whose first word is
            // the next free block (written by `free`); nobody else holds it.
            c.free = unsafe { *(block as *const usize) };
            block
        } else {
            if c.bump + class_bytes > c.bump_end {
                let span = new_span()?;
                debug_assert!(span.is_multiple_of(SPAN_BYTES));
                self.span_class[self.span_index(span)].store(i as u8 + 1, Relaxed);
                self.spans.fetch_add(1, Relaxed);
                c.bump = span;
                c.bump_end = span + SPAN_BYTES;
            }
            let block = c.bump;
            c.bump += class_bytes;
            block
        };
        self.blocks.fetch_add(1, Relaxed);
        Some(block)
    }

    /// Frees the block at `addr` of class size `size` (from [`Small::block_size`]).
    pub fn free(&self, addr: usize, size: usize) {
        let i = CLASSES.partition_point(|&c| c < size);
        let span = addr & !(SPAN_BYTES - 1);
        if !(addr - span).is_multiple_of(size) {
            crate::far::die(&format!("free({addr:#x}): not a block of the far-memory arena"));
        }
        let mut c = self.classes[i].lock();
        // SAFETY: a block of this class the program gives back: at least 16 bytes, ours now.
        unsafe { *(addr as *mut usize) = c.free };
        c.free = addr;
        self.blocks.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_fit_sizes_and_alignments() {
        assert_eq!(class_of(1, 1).map(|i| CLASSES[i]), Some(16));
        assert_eq!(class_of(17, 8).map(|i| CLASSES[i]), Some(32));
        assert_eq!(class_of(1000, 16).map(|i| CLASSES[i]), Some(1024));
        assert_eq!(class_of(100, 64).map(|i| CLASSES[i]), Some(128));
        assert_eq!(class_of(MAX_SMALL, 1).map(|i| CLASSES[i]), Some(MAX_SMALL));
        assert_eq!(class_of(MAX_SMALL + 1, 1), None);
        assert_eq!(class_of(10, 1 << 16), None, "alignments above the largest class are page runs");
        assert!(CLASSES.windows(2).all(|w| w[0] < w[1] && w[0] % 16 == 0));
    }

    #[test]
    fn blocks_come_from_spans_and_free_lists() {
        let mut memory = vec![0u8; 4 * SPAN_BYTES];
        let base = (memory.as_mut_ptr() as usize).next_multiple_of(SPAN_BYTES);
        let small = Small::new(base, 2 * SPAN_BYTES);
        let mut next = 0;
        let mut span = || {
            next += 1;
            (next <= 2).then(|| base + (next - 1) * SPAN_BYTES)
        };
        let a = small.alloc(20000, 16, &mut span).unwrap();
        let b = small.alloc(20000, 16, &mut span).unwrap();
        let c = small.alloc(20000, 16, &mut span).unwrap();
        assert_eq!((a, b, c), (base, base + 20480, base + 40960), "three 20 KiB blocks per span");
        assert_eq!(small.block_size(b), Some(20480));
        small.free(b, 20480);
        assert_eq!(small.alloc(20000, 16, &mut span), Some(b), "a freed block is handed out first");
        let d = small.alloc(64, 64, &mut span).unwrap();
        assert_eq!(d, base + SPAN_BYTES, "a class of its own, in the second span");
        assert_eq!(small.block_size(d), Some(64));
        assert!(small.alloc(20000, 16, &mut span).is_none(), "a full span and no more: None");
        assert_eq!(small.spans.load(Relaxed), 2);
    }
}
