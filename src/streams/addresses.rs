//! An optional cap on stream connections per client address, so that one
//! client cannot take every connection slot. Off by default: behind a load
//! balancer every client has the balancer's address (tidings does not take
//! X-Forwarded-For on trust).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct AddressLimit {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place; freed when dropped.
pub struct AddressPermit {
    limit: Arc<AddressLimit>,
    address: IpAddr,
}

impl AddressLimit {
    /// None when `max` is 0 (no limit).
    pub fn new(max: usize) -> Option<Arc<Self>> {
        (max > 0).then(|| {
            Arc::new(Self {
                max,
                open: Mutex::default(),
            })
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more connection from `address`, if it has one left.
    pub fn try_take(self: &Arc<Self>, address: IpAddr) -> Option<AddressPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(address).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressPermit {
            limit: self.clone(),
            address,
        })
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_places_and_a_closed_connection_frees_one() {
        let limit = AddressLimit::new(2).unwrap();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = limit.try_take(a).unwrap();
        let _second = limit.try_take(a).unwrap();
        assert!(limit.try_take(a).is_none());
        assert!(limit.try_take(b).is_some());
        drop(first);
        assert!(limit.try_take(a).is_some());
        assert!(AddressLimit::new(0).is_none());
    }
}
