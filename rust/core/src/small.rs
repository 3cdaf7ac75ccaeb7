//! A vector that keeps up to `N` items inline before it allocates (std only, no
//! `unsafe`): most connections sit in a handful of rooms, most rooms and users have
//! one member, so the common case needs no heap allocation at all.

#[derive(Clone, Debug)]
pub(crate) enum SmallVec<T: Copy + Default, const N: usize> {
    Inline { len: u8, items: [T; N] },
    Heap(Vec<T>),
}

impl<T: Copy + Default, const N: usize> Default for SmallVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> SmallVec<T, N> {
    pub fn new() -> Self {
        const { assert!(N <= u8::MAX as usize) };
        SmallVec::Inline {
            len: 0,
            items: [T::default(); N],
        }
    }

    /// Holding one item, inline.
    pub fn one(item: T) -> Self {
        let mut v = Self::new();
        v.push(item);
        v
    }

    #[inline]
    pub fn as_slice(&self) -> &[T] {
        match self {
            SmallVec::Inline { len, items } => &items[..usize::from(*len)],
            SmallVec::Heap(vec) => vec,
        }
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            SmallVec::Inline { len, items } => &mut items[..usize::from(*len)],
            SmallVec::Heap(vec) => vec,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        match self {
            SmallVec::Inline { len, .. } => usize::from(*len),
            SmallVec::Heap(vec) => vec.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, item: T) {
        match self {
            SmallVec::Inline { len, items } => {
                let n = usize::from(*len);
                if n < N {
                    items[n] = item;
                    *len += 1;
                } else {
                    let mut vec = Vec::with_capacity(N * 2);
                    vec.extend_from_slice(&items[..]);
                    vec.push(item);
                    *self = SmallVec::Heap(vec);
                }
            }
            SmallVec::Heap(vec) => vec.push(item),
        }
    }

    /// Removes the item at `index`, moving the last item into its place.
    pub fn swap_remove(&mut self, index: usize) -> T {
        match self {
            SmallVec::Inline { len, items } => {
                let last = usize::from(*len) - 1;
                let item = items[index];
                items[index] = items[last];
                items[last] = T::default();
                *len -= 1;
                item
            }
            SmallVec::Heap(vec) => vec.swap_remove(index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_to_the_heap_and_keeps_swap_remove_order() {
        let mut v: SmallVec<u32, 2> = SmallVec::new();
        let mut model = Vec::new();
        for i in 0..5 {
            v.push(i);
            model.push(i);
            assert_eq!(v.as_slice(), &model[..]);
        }
        assert!(matches!(v, SmallVec::Heap(_)));
        for i in [1, 0, 2, 0, 0] {
            assert_eq!(v.swap_remove(i), model.swap_remove(i));
            assert_eq!(v.as_slice(), &model[..]);
        }
        assert!(v.is_empty());
        let mut w: SmallVec<u32, 2> = SmallVec::one(7);
        w.push(8);
        assert_eq!(w.swap_remove(0), 7);
        assert_eq!(w.as_slice(), &[8]);
        w.as_mut_slice()[0] = 9;
        assert_eq!(w.as_slice(), &[9]);
    }
}
