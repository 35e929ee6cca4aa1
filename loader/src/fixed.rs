//! A fixed-capacity vector: boot information is parsed before the heap exists.

use core::fmt;

/// Up to `N` values of `T`, stored inline.
#[derive(Clone, Copy)]
pub struct FixedVec<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
}

/// Returned by [`FixedVec::push`] when the vector already holds `N` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityError;

impl<T: Copy + Default, const N: usize> FixedVec<T, N> {
    /// The number of values it can hold.
    pub const CAPACITY: usize = N;

    /// An empty vector.
    pub fn new() -> Self {
        Self {
            items: [T::default(); N],
            len: 0,
        }
    }

    /// Appends `value`, or fails when full.
    pub fn push(&mut self, value: T) -> Result<(), CapacityError> {
        let slot = self.items.get_mut(self.len).ok_or(CapacityError)?;
        *slot = value;
        self.len += 1;
        Ok(())
    }

    /// The values pushed so far.
    pub fn as_slice(&self) -> &[T] {
        &self.items[..self.len]
    }

    /// The values pushed so far, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.items[..self.len]
    }
}

impl<T: Copy + Default, const N: usize> Default for FixedVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> core::ops::Deref for FixedVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Copy + Default + fmt::Debug, const N: usize> fmt::Debug for FixedVec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for FixedVec<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy + Default + Eq, const N: usize> Eq for FixedVec<T, N> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_until_full() {
        let mut v: FixedVec<u8, 2> = FixedVec::new();
        assert_eq!(v.push(1), Ok(()));
        assert_eq!(v.push(2), Ok(()));
        assert_eq!(v.push(3), Err(CapacityError));
        assert_eq!(v.as_slice(), &[1, 2]);
    }
}
