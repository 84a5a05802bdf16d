//! One copy of a blob at a time on an importer. Steps that need the same blob at once (a base
//! layer many repositories share, none of them committed yet) would each send its own rewrite:
//! the bucket keeps the first and refuses the others (412), and each refused copy is then
//! claimed and looked at for its size, a write and a read spent for nothing. Instead the first
//! step to ask leads the copy and the others wait for where it landed.
//!
//! A step that relies on a copy another step led is as safe from `ferryctl gc` as the leader.
//! The copy is either new, written at most a step's time limit before the follower commits, or
//! was found in place and claimed by the leader, and claims are by digest: the claim too is at
//! most a step's time limit old when the follower commits. gc removes neither while it is
//! younger than its window, which is longer than the step time limits of the importer it runs
//! on (so every importer must have the same limits; docs/operations.md, "Removing abandoned
//! copies").
//!
//! If the leader fails or is stopped, its followers join again: one of them leads a new copy,
//! and each reports its own errors (naming its own manifest).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use ferry_shared::ids::Digest;

/// Where a blob's copy landed: under the new prefix, with this size (`None`: the bucket did not
/// say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Landed {
    /// The copy's size, as the bucket reports it.
    pub(super) size: Option<u64>,
}

/// What a flight's followers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlightState {
    /// The copy is on its way.
    InFlight,
    /// The copy landed.
    Landed(Landed),
    /// The leader did not land it (it failed or was stopped).
    Abandoned,
}

/// The copies in flight on this importer, by digest.
#[derive(Debug, Default)]
pub(super) struct CopyFlights {
    flights: Mutex<HashMap<Digest, watch::Receiver<FlightState>>>,
}

/// A step's part in a blob's copy.
#[derive(Debug)]
pub(super) enum Flight {
    /// No copy of the blob is in flight: this step copies it, and reports where it landed.
    Lead(Lead),
    /// Another step copies it: wait for where it landed.
    Follow(Follow),
}

impl CopyFlights {
    /// Joins the flight of `digest`'s copy, leading it if there is none.
    pub(super) fn join(self: &Arc<Self>, digest: &Digest) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(receiver) = flights.get(digest) {
            return Flight::Follow(Follow {
                receiver: receiver.clone(),
            });
        }
        let (sender, receiver) = watch::channel(FlightState::InFlight);
        flights.insert(digest.clone(), receiver);
        Flight::Lead(Lead {
            flights: Arc::clone(self),
            digest: digest.clone(),
            sender,
        })
    }

    /// Copies in flight.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        (self.flights.lock().unwrap_or_else(PoisonError::into_inner)).is_empty()
    }
}

/// The leader's side of a flight. Dropped without [`Lead::landed`] (the copy failed, or the step
/// was stopped), it tells the followers to copy for themselves.
#[derive(Debug)]
pub(super) struct Lead {
    flights: Arc<CopyFlights>,
    digest: Digest,
    sender: watch::Sender<FlightState>,
}

impl Lead {
    /// Tells the followers where the copy landed.
    pub(super) fn landed(self, landed: Landed) {
        self.sender.send_replace(FlightState::Landed(landed));
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        // Off the map first: a step that joins from now on leads a flight of its own.
        self.flights
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.digest);
        self.sender.send_if_modified(|state| {
            let in_flight = *state == FlightState::InFlight;
            if in_flight {
                *state = FlightState::Abandoned;
            }
            in_flight
        });
    }
}

/// A follower's side of a flight.
#[derive(Debug)]
pub(super) struct Follow {
    receiver: watch::Receiver<FlightState>,
}

impl Follow {
    /// Where the leader's copy landed; `None` when it did not land it.
    pub(super) async fn landed(mut self) -> Option<Landed> {
        let ended = self
            .receiver
            .wait_for(|state| *state != FlightState::InFlight)
            .await;
        match ended.as_deref() {
            Ok(FlightState::Landed(landed)) => Some(*landed),
            // The leader failed, or is gone without a word (it cannot be: its drop tells).
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).expect("digest")
    }

    #[tokio::test]
    async fn followers_get_where_the_leaders_copy_landed() {
        let flights = Arc::new(CopyFlights::default());
        let Flight::Lead(lead) = flights.join(&digest(1)) else {
            panic!("the first leads");
        };
        let Flight::Follow(follow) = flights.join(&digest(1)) else {
            panic!("the second follows");
        };
        assert!(matches!(flights.join(&digest(2)), Flight::Lead(_)));
        let waiting = tokio::spawn(follow.landed());
        lead.landed(Landed { size: Some(7) });
        assert_eq!(
            waiting.await.expect("follower"),
            Some(Landed { size: Some(7) })
        );
        assert!(flights.is_empty(), "a landed flight is off the map");
        assert!(matches!(flights.join(&digest(1)), Flight::Lead(_)));
    }

    #[tokio::test]
    async fn followers_of_a_leader_that_failed_join_again_and_one_leads() {
        let flights = Arc::new(CopyFlights::default());
        let lead = flights.join(&digest(1));
        let (Flight::Follow(first), Flight::Follow(second)) =
            (flights.join(&digest(1)), flights.join(&digest(1)))
        else {
            panic!("the others follow");
        };
        drop(lead);
        assert_eq!(first.landed().await, None);
        assert_eq!(second.landed().await, None);
        assert!(flights.is_empty(), "an abandoned flight is off the map");
        // Joining again, the first leads a new copy and the second follows it.
        let first_again = flights.join(&digest(1));
        assert!(matches!(first_again, Flight::Lead(_)), "{first_again:?}");
        let second_again = flights.join(&digest(1));
        assert!(
            matches!(second_again, Flight::Follow(_)),
            "{second_again:?}"
        );
    }
}
