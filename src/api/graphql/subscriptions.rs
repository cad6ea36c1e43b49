//! GraphQL subscriptions: committed record changes (`record_events`, built
//! by the writer's hook while someone listens), filtered per subscriber.

use super::*;

/// What happened to a record, for subscriptions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

/// A committed change of one record, published to GraphQL subscriptions.
#[derive(Debug, Clone)]
pub struct RecordEvent {
    pub kind: EventKind,
    pub uri: String,
    pub did: String,
    pub collection: String,
    pub rkey: String,
    pub cid: String,
    /// The new record (null for a delete).
    pub record: Value,
}

/// Where committed changes are published (the writer's `on_commit` sends).
pub type Events = tokio::sync::broadcast::Sender<Arc<RecordEvent>>;

/// The changes of a committed batch as subscription events.
pub fn record_events(batch: &[crate::index::event::IndexEvent]) -> Vec<RecordEvent> {
    use crate::index::event::Change;
    let mut out = Vec::new();
    for ev in batch {
        for change in &ev.changes {
            match change {
                Change::Put(w) => out.push(RecordEvent {
                    kind: if w.update {
                        EventKind::Updated
                    } else {
                        EventKind::Created
                    },
                    uri: w.uri.clone(),
                    did: w.did.clone(),
                    collection: w.collection.clone(),
                    rkey: w.rkey.clone(),
                    cid: w.cid.clone(),
                    record: w.value(),
                }),
                Change::Delete {
                    did,
                    collection,
                    rkey,
                    ..
                } => out.push(RecordEvent {
                    kind: EventKind::Deleted,
                    uri: format!("at://{did}/{collection}/{rkey}"),
                    did: did.clone(),
                    collection: collection.clone(),
                    rkey: rkey.clone(),
                    cid: String::new(),
                    record: Value::Null,
                }),
                _ => {}
            }
        }
    }
    out
}

/// A record row for a created or updated record event.
pub(super) fn row_from_event(ev: &RecordEvent) -> RecordRow {
    RecordRow {
        uri: ev.uri.clone(),
        cid: ev.cid.clone(),
        did: ev.did.clone(),
        rkey: ev.rkey.clone(),
        indexed_at: chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string(),
        record: ev.record.clone(),
        handle: None,
        counts: Arc::default(),
        targets: Arc::default(),
    }
}

/// A subscription's `where`, checked in memory against each event.
pub(super) struct EventFilter {
    pub(super) conditions: Vec<(String, Kind, &'static str, Vec<Value>)>,
    pub(super) author: Option<String>,
}

impl EventFilter {
    pub(super) fn read(
        ctx: &ResolverContext<'_>,
        fields: &[(String, String, Kind)],
    ) -> async_graphql::Result<EventFilter> {
        let mut f = EventFilter {
            conditions: Vec::new(),
            author: None,
        };
        let Some(w) = ctx.args.get("where") else {
            return Ok(f);
        };
        let w = w.object()?;
        for (gname, prop, kind) in fields {
            let Some(filter) = w.get(gname) else { continue };
            let filter = filter.object()?;
            for op in ["eq", "gt", "gte", "lt", "lte", "contains"] {
                if let Some(v) = filter.get(op) {
                    f.conditions.push((
                        prop.clone(),
                        *kind,
                        op,
                        vec![v.as_value().clone().into_json()?],
                    ));
                }
            }
            if let Some(list) = filter.get("in") {
                let values = list
                    .list()?
                    .iter()
                    .map(|v| v.as_value().clone().into_json())
                    .collect::<Result<Vec<_>, _>>()?;
                f.conditions.push((prop.clone(), *kind, "in", values));
            }
        }
        if w.get("linksTo").is_some() {
            return Err("subscriptions do not take linksTo".into());
        }
        f.author = w
            .get("author")
            .map(|a| a.string().map(str::to_string))
            .transpose()?;
        Ok(f)
    }

    pub(super) fn matches(&self, ev: &RecordEvent) -> bool {
        if let Some(a) = &self.author {
            if *a != ev.did {
                return false;
            }
        }
        self.conditions.iter().all(|(prop, kind, op, values)| {
            let Some(v) = ev.record.get(prop) else {
                return false;
            };
            let cmp = |want: &Value| -> Option<std::cmp::Ordering> {
                match kind {
                    Kind::Int => Some(v.as_i64()?.cmp(&want.as_i64()?)),
                    Kind::Bool => Some(v.as_bool()?.cmp(&want.as_bool()?)),
                    _ => Some(v.as_str()?.cmp(want.as_str()?)),
                }
            };
            use std::cmp::Ordering::*;
            match *op {
                "eq" => cmp(&values[0]) == Some(Equal),
                "gt" => cmp(&values[0]) == Some(Greater),
                "gte" => matches!(cmp(&values[0]), Some(Greater | Equal)),
                "lt" => cmp(&values[0]) == Some(Less),
                "lte" => matches!(cmp(&values[0]), Some(Less | Equal)),
                "in" => values.iter().any(|w| cmp(w) == Some(Equal)),
                "contains" => match (v.as_str(), values[0].as_str()) {
                    (Some(s), Some(w)) => s.contains(w),
                    _ => false,
                },
                _ => false,
            }
        })
    }
}

/// `<type>Created`, `<type>Updated` and `<type>Deleted`: a type's committed
/// changes, as they are committed.
pub(super) fn subscription_fields(
    nsid: &str,
    tname: &str,
    events: &Events,
    fields: &Arc<Vec<(String, String, Kind)>>,
) -> Vec<SubscriptionField> {
    let mut out = Vec::new();
    for (suffix, kind) in [
        ("Created", EventKind::Created),
        ("Updated", EventKind::Updated),
        ("Deleted", EventKind::Deleted),
    ] {
        let (collection, events, fields) = (nsid.to_string(), events.clone(), fields.clone());
        let ty = if kind == EventKind::Deleted {
            TypeRef::named_nn("DeletedRecord")
        } else {
            TypeRef::named_nn(tname)
        };
        let mut field =
            SubscriptionField::new(format!("{}{suffix}", field_name(nsid)), ty, move |ctx| {
                let (collection, events, fields) =
                    (collection.clone(), events.clone(), fields.clone());
                SubscriptionFieldFuture::new(async move {
                    let filter = EventFilter::read(&ctx, &fields)?;
                    let stream = futures::stream::unfold(events.subscribe(), |mut rx| async move {
                        loop {
                            match rx.recv().await {
                                Ok(ev) => return Some((ev, rx)),
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                    tracing::warn!(
                                        skipped = n,
                                        "GraphQL subscriber too slow; events skipped"
                                    );
                                }
                                Err(_) => return None,
                            }
                        }
                    })
                    .filter(move |ev| {
                        futures::future::ready(
                            ev.collection == collection && ev.kind == kind && filter.matches(ev),
                        )
                    })
                    .map(|ev| {
                        Ok(if ev.kind == EventKind::Deleted {
                            FieldValue::owned_any((*ev).clone())
                        } else {
                            FieldValue::owned_any(row_from_event(&ev))
                        })
                    });
                    Ok(stream)
                })
            })
            .description(format!(
                "{} records {}, as they are committed.",
                nsid,
                suffix.to_lowercase()
            ));
        if kind != EventKind::Deleted {
            field = field.argument(InputValue::new(
                "where",
                TypeRef::named(format!("{tname}Where")),
            ));
        }
        out.push(field);
    }
    out
}
