//! Pure: the replicas' user tables -> one table per way of showing users. Replicas whose
//! `[audit] user_ids` mode or hash key differ would name one person two ways, so only replicas
//! that show users alike are merged; the largest such group is the report's own tables and the
//! others are kept apart, each with a note saying why.

use std::collections::{BTreeSet, HashMap};

use crate::report::{ApartUsers, LeftOut, Recent, Replica, ReplicaState, UserIdsShown, UserSeen};

/// One replica whose report was read.
pub(super) struct Readable {
    pub(super) name: String,
    pub(super) url: String,
    pub(super) user_ids: Option<UserIdsShown>,
    pub(super) users: Vec<UserSeen>,
    pub(super) recent: Vec<Recent>,
}

/// What the merge gives the report.
#[derive(Debug, Default)]
pub(super) struct Merged {
    pub(super) user_ids: Option<UserIdsShown>,
    pub(super) users: Vec<UserSeen>,
    pub(super) recent: Vec<Recent>,
    pub(super) left_out: LeftOut,
    pub(super) apart: Vec<ApartUsers>,
    pub(super) replicas: Vec<Replica>,
}

pub(super) fn merge(readable: Vec<Readable>, cap: usize) -> Merged {
    let mut groups: Vec<(Option<UserIdsShown>, Vec<Readable>)> = Vec::new();
    for r in readable {
        match groups.iter_mut().find(|(ids, _)| *ids == r.user_ids) {
            Some((_, members)) => members.push(r),
            None => groups.push((r.user_ids.clone(), vec![r])),
        }
    }
    for (_, members) in &mut groups {
        members.sort_by(|a, b| a.name.cmp(&b.name));
    }
    // The most replicas first; among equals, the group of the first replica by name.
    groups.sort_by(|(_, a), (_, b)| b.len().cmp(&a.len()).then_with(|| a[0].name.cmp(&b[0].name)));
    let mut merged = Merged::default();
    let mut groups = groups.into_iter();
    if let Some((ids, members)) = groups.next() {
        for m in &members {
            merged.replicas.push(Replica {
                name: m.name.clone(),
                url: m.url.clone(),
                state: ReplicaState::Merged,
                reason: None,
            });
        }
        let (users, recent, left_out) = tables(members, cap);
        (merged.user_ids, merged.users, merged.recent, merged.left_out) = (ids, users, recent, left_out);
    }
    for (ids, members) in groups {
        let why = format!(
            "users shown as {} here but as {} in the merged tables: one person would have two names, so these \
             users are not merged with those",
            shown(ids.as_ref()),
            shown(merged.user_ids.as_ref())
        );
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        for m in &members {
            merged.replicas.push(Replica {
                name: m.name.clone(),
                url: m.url.clone(),
                state: ReplicaState::Apart,
                reason: Some(why.clone()),
            });
        }
        let (users, recent, _) = tables(members, cap);
        merged.apart.push(ApartUsers {
            user_ids: ids,
            replicas: names,
            why,
            users_without_mfa: users,
            recent_without_mfa: recent,
        });
    }
    merged
}

/// `[audit] user_ids` in words.
fn shown(ids: Option<&UserIdsShown>) -> String {
    match ids {
        None => "unstated (a gateway too old to say)".into(),
        Some(UserIdsShown { mode, key_id: Some(key) }) => format!("{mode} (key {key})"),
        Some(UserIdsShown { mode, key_id: None }) => mode.clone(),
    }
}

/// One group's tables: a user seen on several replicas is one row (requests summed, last seen the
/// latest, the replicas listed); recent requests newest first. Each cut at `cap` rows.
fn tables(members: Vec<Readable>, cap: usize) -> (Vec<UserSeen>, Vec<Recent>, LeftOut) {
    let mut by_user: HashMap<String, (UserSeen, BTreeSet<String>)> = HashMap::new();
    let mut recent = Vec::new();
    for m in members {
        for u in m.users {
            let (seen, replicas) = by_user.entry(u.user.clone()).or_insert_with(|| {
                (
                    UserSeen {
                        user: u.user.clone(),
                        last_seen: u.last_seen,
                        requests_without_mfa: 0,
                        replicas: Vec::new(),
                    },
                    BTreeSet::new(),
                )
            });
            seen.requests_without_mfa += u.requests_without_mfa;
            seen.last_seen = seen.last_seen.max(u.last_seen);
            replicas.insert(m.name.clone());
        }
        recent.extend(m.recent.into_iter().map(|r| Recent { replica: Some(m.name.clone()), ..r }));
    }
    let mut users: Vec<UserSeen> =
        by_user.into_values().map(|(u, replicas)| UserSeen { replicas: replicas.into_iter().collect(), ..u }).collect();
    users.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.user.cmp(&b.user)));
    recent.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.replica.cmp(&b.replica)));
    let left_out = LeftOut { users: users.len().saturating_sub(cap), recent: recent.len().saturating_sub(cap) };
    users.truncate(cap);
    recent.truncate(cap);
    (users, recent, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::MAX_ROWS;

    fn user(name: &str, last_seen: i64, n: u64) -> UserSeen {
        UserSeen { user: name.into(), last_seen, requests_without_mfa: n, replicas: vec![] }
    }

    fn recent(time: i64, user: &str) -> Recent {
        Recent { time, route: "offers".into(), app: "a".into(), user: Some(user.into()), tenant: None, replica: None }
    }

    fn replica(name: &str, ids: Option<UserIdsShown>, users: Vec<UserSeen>, recent: Vec<Recent>) -> Readable {
        Readable { name: name.into(), url: format!("http://{name}/report"), user_ids: ids, users, recent }
    }

    fn hash(key: &str) -> Option<UserIdsShown> {
        Some(UserIdsShown { mode: "hash".into(), key_id: Some(key.into()) })
    }

    #[test]
    fn a_user_on_several_replicas_is_one_row_and_recent_requests_are_newest_first() {
        let m = merge(
            vec![
                replica(
                    "b",
                    hash("k1"),
                    vec![user("u1", 50, 2), user("u2", 10, 1)],
                    vec![recent(50, "u1"), recent(10, "u2")],
                ),
                replica("a", hash("k1"), vec![user("u1", 70, 3)], vec![recent(70, "u1"), recent(20, "u1")]),
            ],
            MAX_ROWS,
        );
        assert_eq!(
            m.users,
            [
                UserSeen {
                    user: "u1".into(),
                    last_seen: 70,
                    requests_without_mfa: 5,
                    replicas: vec!["a".into(), "b".into()]
                },
                UserSeen { user: "u2".into(), last_seen: 10, requests_without_mfa: 1, replicas: vec!["b".into()] },
            ]
        );
        let times: Vec<(i64, Option<&str>)> = m.recent.iter().map(|r| (r.time, r.replica.as_deref())).collect();
        assert_eq!(times, [(70, Some("a")), (50, Some("b")), (20, Some("a")), (10, Some("b"))]);
        assert!(m.apart.is_empty() && m.replicas.iter().all(|r| r.state == ReplicaState::Merged));
        assert_eq!(m.user_ids, hash("k1"));
    }

    #[test]
    fn replicas_that_show_users_otherwise_are_kept_apart_with_the_reason() {
        let plain = Some(UserIdsShown { mode: "plain".into(), key_id: None });
        let m = merge(
            vec![
                replica("a", hash("k1"), vec![user("h1", 5, 1)], vec![]),
                replica("b", hash("k1"), vec![user("h1", 6, 1)], vec![]),
                replica("c", hash("k2"), vec![user("h9", 7, 1)], vec![]),
                replica("d", plain, vec![user("alice@example", 8, 1)], vec![]),
            ],
            MAX_ROWS,
        );
        assert_eq!(m.users.len(), 1, "a and b merged: {:?}", m.users);
        assert_eq!(m.apart.len(), 2);
        assert_eq!(m.apart[0].replicas, ["c"]);
        assert_eq!(m.apart[0].users_without_mfa[0].user, "h9");
        assert!(m.apart[0].why.contains("hash (key k2) here but as hash (key k1)"), "{}", m.apart[0].why);
        assert!(m.apart[1].why.contains("plain here"), "{}", m.apart[1].why);
        let states: Vec<(&str, ReplicaState)> = m.replicas.iter().map(|r| (r.name.as_str(), r.state)).collect();
        use ReplicaState::{Apart, Merged};
        assert_eq!(states, [("a", Merged), ("b", Merged), ("c", Apart), ("d", Apart)]);
    }

    #[test]
    fn tables_are_cut_at_the_cap_and_say_how_much_was_left_out() {
        let users: Vec<UserSeen> = (0..5).map(|i| user(&format!("u{i}"), i, 1)).collect();
        let rows: Vec<Recent> = (0..7).map(|i| recent(i, "u")).collect();
        let m = merge(vec![replica("a", None, users, rows)], 3);
        assert_eq!((m.users.len(), m.recent.len()), (3, 3));
        assert_eq!(m.left_out, LeftOut { users: 2, recent: 4 });
        assert_eq!(m.recent[0].time, 6, "the newest kept");
        assert_eq!(m.users[0].user, "u4", "the latest seen kept");
    }
}
