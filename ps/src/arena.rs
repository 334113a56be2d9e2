//! A growable array of fixed-size records stored in bounded chunks.
//!
//! A single `Vec` doubling its capacity would cost up to 2x the memory of the rows it
//! holds (and a 2x transient copy while growing); chunks of at most [`CHUNK_RECORDS`]
//! records bound the slack to one partly filled chunk. Records are addressed by a dense
//! `u32` slot, so the hash index stores 4 bytes per row, not a pointer.

/// Records per chunk once a table is large (the first chunk grows gradually so a small
/// table stays small).
pub const CHUNK_RECORDS: usize = 4096;

pub struct Arena<T: Copy> {
    stride: usize,
    len: usize,
    chunks: Vec<Vec<T>>,
}

impl<T: Copy> Arena<T> {
    pub fn new(stride: usize) -> Self {
        Arena {
            stride,
            len: 0,
            chunks: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    #[inline]
    fn locate(&self, slot: usize) -> (usize, usize) {
        (slot / CHUNK_RECORDS, (slot % CHUNK_RECORDS) * self.stride)
    }

    /// Appends a record; returns its slot.
    pub fn push(&mut self, record: &[T]) -> usize {
        debug_assert_eq!(record.len(), self.stride);
        let slot = self.len;
        if slot.is_multiple_of(CHUNK_RECORDS) {
            let cap = if self.chunks.is_empty() {
                self.stride * 16
            } else {
                self.stride * CHUNK_RECORDS
            };
            self.chunks.push(Vec::with_capacity(cap));
        }
        let only = self.chunks.len() == 1;
        let last = self.chunks.len() - 1;
        let chunk = &mut self.chunks[last];
        if chunk.len() == chunk.capacity() && only {
            // Grow the first chunk geometrically but never past one full chunk.
            let want = (chunk.capacity() * 2).min(self.stride * CHUNK_RECORDS);
            chunk.reserve_exact(want - chunk.len());
        }
        chunk.extend_from_slice(record);
        self.len += 1;
        slot
    }

    #[inline]
    pub fn get(&self, slot: usize) -> &[T] {
        let (c, o) = self.locate(slot);
        &self.chunks[c][o..o + self.stride]
    }

    #[inline]
    pub fn get_mut(&mut self, slot: usize) -> &mut [T] {
        let (c, o) = self.locate(slot);
        let s = self.stride;
        &mut self.chunks[c][o..o + s]
    }

    /// Moves the last record into `slot` and drops the last one; returns the slot the
    /// moved record came from (== `slot` when `slot` was the last).
    pub fn swap_remove(&mut self, slot: usize) -> usize {
        let last = self.len - 1;
        if slot != last {
            let (lc, lo) = self.locate(last);
            let (sc, so) = self.locate(slot);
            let s = self.stride;
            if lc == sc {
                self.chunks[lc].copy_within(lo..lo + s, so);
            } else {
                let (head, tail) = self.chunks.split_at_mut(lc);
                head[sc][so..so + s].copy_from_slice(&tail[0][lo..lo + s]);
            }
        }
        let (lc, lo) = self.locate(last);
        self.chunks[lc].truncate(lo);
        if lo == 0 {
            self.chunks.pop();
        }
        self.len -= 1;
        last
    }

    /// Heap bytes held (capacity, not length: what the process pays for).
    pub fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.capacity() * std::mem::size_of::<T>())
            .sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<T>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_get_swap_remove_across_chunks() {
        let mut a = Arena::<u32>::new(2);
        let n = CHUNK_RECORDS * 2 + 10;
        for i in 0..n as u32 {
            assert_eq!(a.push(&[i, i + 1]), i as usize);
        }
        assert_eq!(a.get(5000), &[5000, 5001]);
        // Remove from the first chunk: the last record moves there.
        assert_eq!(a.swap_remove(3), n - 1);
        assert_eq!(a.get(3), &[(n - 1) as u32, n as u32]);
        assert_eq!(a.len(), n - 1);
        // Drain everything; chunks are released.
        while !a.is_empty() {
            a.swap_remove(0);
        }
        assert_eq!(a.chunks.len(), 0);
        a.push(&[7, 8]);
        assert_eq!(a.get(0), &[7, 8]);
    }
}
