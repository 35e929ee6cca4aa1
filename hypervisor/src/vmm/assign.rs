//! Which pCPU runs which vCPU: the vCPUs of all VMs in order (VM 0's first), vCPU number
//! `k` of that order on pCPU `k mod n`. A pCPU with more than one vCPU runs them
//! round-robin; a pCPU with none idles (and still samples).

use alloc::vec::Vec;

/// For each pCPU `0..pcpus`, the `(vm, vcpu)` pairs it runs. `vcpus[i]` is VM i's count.
pub fn assign(vcpus: &[usize], pcpus: usize) -> Vec<Vec<(usize, usize)>> {
    let pcpus = pcpus.max(1);
    let mut out: Vec<Vec<(usize, usize)>> = (0..pcpus).map(|_| Vec::new()).collect();
    let mut k = 0;
    for (vm, &n) in vcpus.iter().enumerate() {
        for vcpu in 0..n {
            out[k % pcpus].push((vm, vcpu));
            k += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_over_pcpus() {
        assert_eq!(assign(&[1], 2), vec![vec![(0, 0)], vec![]]);
        assert_eq!(assign(&[2, 1], 2), vec![vec![(0, 0), (1, 0)], vec![(0, 1)]]);
        assert_eq!(
            assign(&[3], 2),
            vec![vec![(0, 0), (0, 2)], vec![(0, 1)]],
            "more vCPUs than pCPUs share them"
        );
        assert_eq!(assign(&[1, 1], 1), vec![vec![(0, 0), (1, 0)]]);
        assert_eq!(assign(&[], 0), vec![Vec::<(usize, usize)>::new()]);
    }
}
