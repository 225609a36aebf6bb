//! The cluster's members as the log defines them, and etcd's rules for changing them.
//!
//! Every member applies the same configuration changes in the same order and checks them here
//! the same way (etcd's `ValidateConfigurationChange`): a change that breaks a rule changes
//! nothing, neither the member table nor Raft's configuration, and its proposer gets the error.
//! The checks that depend on one member's view (enough started members, a learner in sync)
//! happen before proposing, in the runtime.

use crate::pb::etcdserverpb::Member;
use crate::pb::keelpb::{ConfChange, ConfChangeType, ConfState};
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet};

/// etcd 3.5 allows one learner at a time (`maxLearners`).
pub const LEARNERS_MAX: usize = 1;
/// Bound on the removed member ids remembered; beyond it the lowest ids are forgotten (a new
/// member id is derived from a hash and the time, so an old id coming back is not a concern).
pub const REMOVED_MAX: usize = 4096;

/// A rejected membership change, with the gRPC message etcd gives clients.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum MemberError {
    /// etcd's `ErrIDRemoved`, which its gRPC layer reports as "member not found".
    #[error("etcdserver: member not found")]
    Removed,
    #[error("etcdserver: member not found")]
    NotFound,
    #[error("etcdserver: member ID already exist")]
    Exists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: given member URLs are invalid")]
    BadUrls,
    /// What Keel never proposes, refused alike by every member that applies it (a forged or
    /// damaged entry must not stop the state machine).
    #[error("etcdserver: unsupported configuration change type {0}")]
    UnknownChange(i32),
    #[error("etcdserver: configuration change carries no member record")]
    NoMemberRecord,
    #[error("etcdserver: re-configuration failed: it would remove the last voting member")]
    LastVoter,
}

/// The member table and the ids removed from it.
///
/// Invariant: the voters and learners of [`Membership::conf_state`] are Raft's configuration
/// after the same changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Membership {
    members: BTreeMap<u64, Member>,
    removed: BTreeSet<u64>,
}

impl Membership {
    pub fn restore(members: impl Iterator<Item = Member>, removed: impl Iterator<Item = u64>) -> Self {
        Membership { members: members.map(|m| (m.id, m)).collect(), removed: removed.collect() }
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn member_mut(&mut self, id: u64) -> Option<&mut Member> {
        self.members.get_mut(&id)
    }

    /// Members by id, ascending (etcd lists them in this order).
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn removed(&self) -> impl Iterator<Item = u64> + '_ {
        self.removed.iter().copied()
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    pub fn conf_state(&self) -> ConfState {
        let (learners, voters): (Vec<&Member>, Vec<&Member>) =
            self.members.values().partition(|m| m.is_learner);
        ConfState {
            voters: voters.iter().map(|m| m.id).collect(),
            learners: learners.iter().map(|m| m.id).collect(),
        }
    }

    fn voters(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !m.is_learner)
    }

    /// etcd's `IsStarted`: a member has started once it published its name.
    fn started(m: &Member) -> bool {
        !m.name.is_empty()
    }

    /// etcd's `IsReadyToAddVotingMember`: with the new member counted (as not started), a
    /// quorum of voters has started. A lone started member may always add a second.
    pub fn ready_to_add_voter(&self) -> bool {
        let members = self.voters().count() + 1;
        let started = self.voters().filter(|m| Self::started(m)).count();
        (started == 1 && members == 2) || started > members / 2 // a quorum: members / 2 + 1
    }

    /// etcd's `IsReadyToRemoveVotingMember`: without `id`, a quorum of voters has started.
    pub fn ready_to_remove_voter(&self, id: u64) -> bool {
        let rest = self.voters().filter(|m| m.id != id);
        let (members, started) = rest.fold((0, 0), |(n, s), m| (n + 1, s + Self::started(m) as usize));
        started > members / 2 // a quorum: members / 2 + 1
    }

    /// etcd's `IsReadyToPromoteMember`: with the learner counted as a started voter, a quorum of
    /// voters has started.
    pub fn ready_to_promote(&self) -> bool {
        let members = self.voters().count() + 1;
        let started = self.voters().filter(|m| Self::started(m)).count() + 1;
        started > members / 2 // a quorum: members / 2 + 1
    }

    /// Checks a committed change against the table and, if it passes, makes it.
    pub fn apply(&mut self, cc: &ConfChange) -> Result<(), MemberError> {
        let id = cc.node_id;
        // No member has id 0 (etcd answers "member not found" for it).
        if id == 0 {
            return Err(MemberError::NotFound);
        }
        if self.removed.contains(&id) {
            return Err(MemberError::Removed);
        }
        let Ok(change) = ConfChangeType::try_from(cc.change_type) else {
            return Err(MemberError::UnknownChange(cc.change_type));
        };
        match change {
            // A promotion is an AddNode (Raft makes the learner a voter); as an AddLearnerNode
            // the table and Raft would disagree, so it is refused.
            ConfChangeType::AddLearnerNode if cc.promote => {
                return Err(MemberError::UnknownChange(cc.change_type))
            }
            ConfChangeType::AddNode if cc.promote => {
                let m = self.members.get_mut(&id).ok_or(MemberError::NotFound)?;
                if !m.is_learner {
                    return Err(MemberError::NotLearner);
                }
                m.is_learner = false;
            }
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let Ok(mut member) = Member::decode(cc.context.clone()) else {
                    return Err(MemberError::NoMemberRecord);
                };
                if self.members.contains_key(&id) {
                    return Err(MemberError::Exists);
                }
                self.check_urls_free(id, &member.peer_ur_ls)?;
                member.id = id;
                member.is_learner = change == ConfChangeType::AddLearnerNode;
                if member.is_learner && self.members.values().filter(|m| m.is_learner).count() >= LEARNERS_MAX
                {
                    return Err(MemberError::TooManyLearners);
                }
                self.members.insert(id, member);
            }
            ConfChangeType::RemoveNode => {
                let last_voter =
                    self.members.get(&id).is_some_and(|m| !m.is_learner) && self.voters().count() == 1;
                if last_voter {
                    return Err(MemberError::LastVoter);
                }
                self.members.remove(&id).ok_or(MemberError::NotFound)?;
                self.removed.insert(id);
                while self.removed.len() > REMOVED_MAX {
                    self.removed.pop_first();
                }
            }
            ConfChangeType::UpdateNode => {
                let Ok(update) = Member::decode(cc.context.clone()) else {
                    return Err(MemberError::NoMemberRecord);
                };
                self.check_urls_free(id, &update.peer_ur_ls)?;
                let m = self.members.get_mut(&id).ok_or(MemberError::NotFound)?;
                m.peer_ur_ls = update.peer_ur_ls;
            }
        }
        Ok(())
    }

    /// No member but `id` may have any of `urls`.
    fn check_urls_free(&self, id: u64, urls: &[String]) -> Result<(), MemberError> {
        let clash = self
            .members
            .values()
            .filter(|m| m.id != id)
            .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)));
        if clash {
            return Err(MemberError::PeerUrlExists);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, url: &str) -> Member {
        Member { name: name.into(), peer_ur_ls: vec![url.into()], ..Default::default() }
    }

    fn cc(change: ConfChangeType, id: u64, m: &Member) -> ConfChange {
        ConfChange {
            change_type: change as i32,
            node_id: id,
            context: m.encode_to_vec().into(),
            ..Default::default()
        }
    }

    fn three() -> Membership {
        let mut t = Membership::default();
        for (id, port) in [(1, 1), (2, 2), (3, 3)] {
            t.apply(&cc(ConfChangeType::AddNode, id, &member("m", &format!("http://h:{port}")))).unwrap();
        }
        t
    }

    #[test]
    fn etcds_rules_for_each_change() {
        use ConfChangeType::*;
        let mut t = three();
        assert_eq!(t.apply(&cc(AddNode, 2, &member("", "http://h:9"))), Err(MemberError::Exists));
        assert_eq!(t.apply(&cc(AddNode, 4, &member("", "http://h:2"))), Err(MemberError::PeerUrlExists));
        t.apply(&cc(AddLearnerNode, 4, &member("", "http://h:4"))).unwrap();
        assert_eq!(t.conf_state(), ConfState { voters: vec![1, 2, 3], learners: vec![4] });
        assert_eq!(
            t.apply(&cc(AddLearnerNode, 5, &member("", "http://h:5"))),
            Err(MemberError::TooManyLearners)
        );
        let promote =
            |id| ConfChange { change_type: AddNode as i32, node_id: id, promote: true, ..Default::default() };
        assert_eq!(t.apply(&promote(1)), Err(MemberError::NotLearner));
        assert_eq!(t.apply(&promote(9)), Err(MemberError::NotFound));
        t.apply(&promote(4)).unwrap();
        assert_eq!(t.conf_state(), ConfState { voters: vec![1, 2, 3, 4], learners: vec![] });
        assert_eq!(t.apply(&cc(UpdateNode, 4, &member("", "http://h:1"))), Err(MemberError::PeerUrlExists));
        assert_eq!(t.apply(&cc(UpdateNode, 9, &member("", "http://h:9"))), Err(MemberError::NotFound));
        t.apply(&cc(UpdateNode, 4, &member("", "http://h:44"))).unwrap();
        assert_eq!(t.member(4).unwrap().peer_ur_ls, vec!["http://h:44".to_string()]);
        let remove = |id| ConfChange { change_type: RemoveNode as i32, node_id: id, ..Default::default() };
        assert_eq!(t.apply(&remove(9)), Err(MemberError::NotFound));
        t.apply(&remove(4)).unwrap();
        assert_eq!(t.apply(&remove(4)), Err(MemberError::Removed));
        assert_eq!(t.apply(&cc(AddNode, 4, &member("", "http://h:4"))), Err(MemberError::Removed));
        assert_eq!(t.conf_state(), ConfState { voters: vec![1, 2, 3], learners: vec![] });
    }

    #[test]
    fn started_member_quorum_rules_follow_etcd() {
        let mut t = Membership::default();
        t.apply(&cc(ConfChangeType::AddNode, 1, &member("a", "http://h:1"))).unwrap();
        // A lone member may add a second; with that one unstarted, not a third.
        assert!(t.ready_to_add_voter());
        t.apply(&cc(ConfChangeType::AddNode, 2, &member("", "http://h:2"))).unwrap();
        assert!(!t.ready_to_add_voter());
        assert!(t.ready_to_promote());
        // Removing the started one would leave no started quorum; removing the other is fine.
        assert!(!t.ready_to_remove_voter(1));
        assert!(t.ready_to_remove_voter(2));
    }
}
