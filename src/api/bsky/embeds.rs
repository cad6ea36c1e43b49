//! Embed views of posts (`app.bsky.embed.*#view`), as the Bluesky AppView
//! builds them: images and external link cards point at an image CDN, videos
//! at a video CDN, quoted posts are `viewRecord`s with their author and
//! counts.
//!
//! Depth follows the AppView: a post's embed is shown for a post at depth 0
//! or 1 (a post in an answer, or a post quoted by one), so a quoted post's
//! `viewRecord` carries its own embed in `embeds` and a post quoted by a
//! quoted post is shown without one. A quoted record that is not an indexed
//! post (a deleted or hidden post, a feed generator, list or starter pack,
//! which lexview does not index unless their lexicons are loaded) is a
//! `viewNotFound`; a quote across a block is a `viewBlocked` and one the
//! quoted post's gate detaches a `viewDetached` (`gates.rs`).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

const POST: &str = "app.bsky.feed.post";

/// Where blobs are shown from: URL patterns with `{preset}` (images only),
/// `{did}` and `{cid}` placeholders. Video URLs take the DID and CID
/// percent-encoded, as the AppView builds them.
#[derive(Debug, Clone)]
pub struct MediaUrls {
    pub image: String,
    pub video_playlist: String,
    pub video_thumbnail: String,
}

/// Bluesky's public image CDN.
pub const DEFAULT_IMAGE_URL: &str = "https://cdn.bsky.app/img/{preset}/plain/{did}/{cid}@jpeg";
/// Bluesky's public video CDN: playlists and thumbnails.
pub const DEFAULT_VIDEO_PLAYLIST_URL: &str =
    "https://video.bsky.app/watch/{did}/{cid}/playlist.m3u8";
pub const DEFAULT_VIDEO_THUMBNAIL_URL: &str =
    "https://video.bsky.app/watch/{did}/{cid}/thumbnail.jpg";

impl Default for MediaUrls {
    fn default() -> Self {
        MediaUrls {
            image: DEFAULT_IMAGE_URL.into(),
            video_playlist: DEFAULT_VIDEO_PLAYLIST_URL.into(),
            video_thumbnail: DEFAULT_VIDEO_THUMBNAIL_URL.into(),
        }
    }
}

impl MediaUrls {
    fn image(&self, preset: &str, did: &str, cid: &str) -> String {
        self.image
            .replace("{preset}", preset)
            .replace("{did}", did)
            .replace("{cid}", cid)
    }

    fn video(pattern: &str, did: &str, cid: &str) -> String {
        pattern
            .replace("{did}", &encode_component(did))
            .replace("{cid}", &encode_component(cid))
    }
}

/// JavaScript's `encodeURIComponent` (what the AppView applies): everything
/// but `A-Z a-z 0-9 - _ . ! ~ * ' ( )` percent-encoded as UTF-8.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The CID of a blob as stored: `{"$type":"blob","ref":{"$link":CID}}`, or
/// the legacy `{"cid":CID}`.
fn blob_cid(blob: &Value) -> Option<&str> {
    blob.pointer("/ref/$link")
        .or_else(|| blob.get("cid"))
        .and_then(Value::as_str)
}

/// The embed's `$type`, or `None` when it has none.
fn kind(embed: &Value) -> Option<&str> {
    embed.get("$type").and_then(Value::as_str)
}

/// The URI of the record an embed quotes (`app.bsky.embed.record`, or the
/// record half of `recordWithMedia`), of any collection.
pub(crate) fn embedded_record(embed: &Value) -> Option<&str> {
    match kind(embed)? {
        "app.bsky.embed.record" => embed.pointer("/record/uri"),
        "app.bsky.embed.recordWithMedia" => embed.pointer("/record/record/uri"),
        _ => None,
    }?
    .as_str()
}

/// [`embedded_record`], when it is a post.
pub(crate) fn quoted_post(embed: &Value) -> Option<&str> {
    embedded_record(embed).filter(|uri| crate::index::event::collection_of(uri) == Some(POST))
}

/// Copies the keys of `from` that are present into `to`.
fn copy(to: &mut Map<String, Value>, from: &Value, keys: &[&str]) {
    for k in keys {
        if let Some(v) = from.get(*k) {
            to.insert((*k).to_string(), v.clone());
        }
    }
}

fn images(media: &MediaUrls, did: &str, embed: &Value) -> Value {
    let images: Vec<Value> = embed["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|img| {
            let cid = img.get("image").and_then(blob_cid).unwrap_or_default();
            let mut view = Map::new();
            view.insert(
                "thumb".into(),
                json!(media.image("feed_thumbnail", did, cid)),
            );
            view.insert(
                "fullsize".into(),
                json!(media.image("feed_fullsize", did, cid)),
            );
            copy(&mut view, img, &["alt", "aspectRatio"]);
            Value::Object(view)
        })
        .collect();
    json!({"$type": "app.bsky.embed.images#view", "images": images})
}

fn video(media: &MediaUrls, did: &str, embed: &Value) -> Value {
    let cid = embed.get("video").and_then(blob_cid).unwrap_or_default();
    let mut view = Map::new();
    view.insert("$type".into(), json!("app.bsky.embed.video#view"));
    view.insert("cid".into(), json!(cid));
    view.insert(
        "playlist".into(),
        json!(MediaUrls::video(&media.video_playlist, did, cid)),
    );
    view.insert(
        "thumbnail".into(),
        json!(MediaUrls::video(&media.video_thumbnail, did, cid)),
    );
    copy(&mut view, embed, &["alt", "aspectRatio", "presentation"]);
    Value::Object(view)
}

fn external(media: &MediaUrls, did: &str, embed: &Value) -> Value {
    let ext = &embed["external"];
    let mut view = Map::new();
    copy(&mut view, ext, &["uri", "title", "description"]);
    if let Some(cid) = ext.get("thumb").and_then(blob_cid) {
        view.insert(
            "thumb".into(),
            json!(media.image("feed_thumbnail", did, cid)),
        );
    }
    json!({"$type": "app.bsky.embed.external#view", "external": view})
}

/// The media half of an embed (images, video or an external card).
fn media_view(media: &MediaUrls, did: &str, embed: &Value) -> Option<Value> {
    match kind(embed)? {
        "app.bsky.embed.images" => Some(images(media, did, embed)),
        "app.bsky.embed.video" => Some(video(media, did, embed)),
        "app.bsky.embed.external" => Some(external(media, did, embed)),
        _ => None,
    }
}

/// What stands between a post and the record it quotes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuoteState {
    /// The two authors block each other.
    pub blocked: bool,
    /// The quoted post's gate detaches the quote.
    pub detached: Option<super::gates::Detached>,
}

/// The `record` of an `app.bsky.embed.record#view`: the quoted post's
/// `viewRecord` (from `quoted`, the post views one level deeper), or a
/// `viewBlocked`, `viewDetached` or `viewNotFound`, checked in the order
/// the AppView checks them; `Err` for those three.
fn record_view(
    uri: &str,
    quoted: &HashMap<String, Value>,
    depth: u8,
    gate: QuoteState,
) -> Result<Value, Value> {
    use super::gates::Detached;
    if gate.blocked {
        return Err(
            json!({"$type": "app.bsky.embed.record#viewBlocked", "uri": uri, "blocked": true,
                          "author": {"did": crate::index::event::did_of(uri)}}),
        );
    }
    let detached =
        json!({"$type": "app.bsky.embed.record#viewDetached", "uri": uri, "detached": true});
    if gate.detached == Some(Detached::Disabled) {
        return Err(detached);
    }
    let Some(post) = quoted.get(uri) else {
        return Err(
            json!({"$type": "app.bsky.embed.record#viewNotFound", "uri": uri, "notFound": true}),
        );
    };
    if gate.detached == Some(Detached::Listed) {
        return Err(detached);
    }
    let mut view = json!({
        "$type": "app.bsky.embed.record#viewRecord",
        "uri": post["uri"],
        "cid": post["cid"],
        "author": post["author"],
        "value": post["record"],
        "labels": post["labels"],
        "likeCount": post["likeCount"],
        "replyCount": post["replyCount"],
        "repostCount": post["repostCount"],
        "quoteCount": post["quoteCount"],
        "indexedAt": post["indexedAt"],
    });
    // The quoted post's own embed, one level down only.
    if depth <= 1 {
        view["embeds"] = json!(post.get("embed").into_iter().cloned().collect::<Vec<_>>());
    }
    Ok(view)
}

/// The view of `embed`, the embed of the post `post_uri` by `did`, shown at
/// `depth` (1 for a post of the answer, 2 for a quoted post); `quoted` holds
/// the post views at `depth` of the posts such embeds quote, and `gate`
/// what stands between the post and a record it quotes. `None` for an embed
/// of a kind the AppView does not show.
pub(crate) fn embed_view(
    media: &MediaUrls,
    did: &str,
    embed: &Value,
    quoted: &HashMap<String, Value>,
    depth: u8,
    gate: QuoteState,
) -> Option<Value> {
    let record = || {
        record_view(
            embedded_record(embed).unwrap_or_default(),
            quoted,
            depth,
            gate,
        )
    };
    match kind(embed)? {
        "app.bsky.embed.record" => Some(json!({
            "$type": "app.bsky.embed.record#view",
            "record": record().unwrap_or_else(|v| v),
        })),
        "app.bsky.embed.recordWithMedia" => {
            let media = media_view(media, did, &embed["media"])?;
            // As the AppView has it: the record half of a recordWithMedia
            // view carries the record view's `$type` only when the quoted
            // record is not shown.
            let record = match record() {
                Ok(view) => json!({"record": view}),
                Err(placeholder) => {
                    json!({"$type": "app.bsky.embed.record#view", "record": placeholder})
                }
            };
            Some(json!({
                "$type": "app.bsky.embed.recordWithMedia#view",
                "media": media,
                "record": record,
            }))
        }
        _ => media_view(media, did, embed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:plc:abc";
    const CID: &str = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy";

    /// The view of `embed` by `DID` at `depth`, with nothing between it
    /// and what it quotes.
    fn show(embed: &Value, quoted: &HashMap<String, Value>, depth: u8) -> Option<Value> {
        embed_view(
            &MediaUrls::default(),
            DID,
            embed,
            quoted,
            depth,
            QuoteState::default(),
        )
    }

    fn blob() -> Value {
        json!({"$type": "blob", "ref": {"$link": CID}, "mimeType": "image/png", "size": 10})
    }

    #[test]
    fn images_and_cards_point_at_the_cdn() {
        let embed = json!({"$type": "app.bsky.embed.images", "images": [
            {"image": blob(), "alt": "a cat", "aspectRatio": {"width": 3, "height": 2}},
            {"image": {"cid": CID, "mimeType": "image/jpeg"}, "alt": ""}]});
        let view = show(&embed, &HashMap::new(), 1).unwrap();
        assert_eq!(
            view,
            json!({"$type": "app.bsky.embed.images#view", "images": [
                {"thumb": format!("https://cdn.bsky.app/img/feed_thumbnail/plain/{DID}/{CID}@jpeg"),
                 "fullsize": format!("https://cdn.bsky.app/img/feed_fullsize/plain/{DID}/{CID}@jpeg"),
                 "alt": "a cat", "aspectRatio": {"width": 3, "height": 2}},
                {"thumb": format!("https://cdn.bsky.app/img/feed_thumbnail/plain/{DID}/{CID}@jpeg"),
                 "fullsize": format!("https://cdn.bsky.app/img/feed_fullsize/plain/{DID}/{CID}@jpeg"),
                 "alt": ""}]})
        );
        let card = json!({"$type": "app.bsky.embed.external",
            "external": {"uri": "https://example.com", "title": "t", "description": "d"}});
        assert_eq!(
            show(&card, &HashMap::new(), 1).unwrap(),
            json!({"$type": "app.bsky.embed.external#view",
                   "external": {"uri": "https://example.com", "title": "t", "description": "d"}})
        );
    }

    #[test]
    fn video_urls_take_the_did_and_cid_percent_encoded() {
        let embed = json!({"$type": "app.bsky.embed.video", "video": blob(), "alt": "clip"});
        let view = show(&embed, &HashMap::new(), 1).unwrap();
        assert_eq!(
            view["playlist"],
            format!("https://video.bsky.app/watch/did%3Aplc%3Aabc/{CID}/playlist.m3u8")
        );
        assert_eq!(view["cid"], CID);
        assert_eq!(view["alt"], "clip");
        assert!(view.get("aspectRatio").is_none());
    }

    #[test]
    fn quotes_are_view_records_or_not_found() {
        let quoted_uri = format!("at://{DID}/app.bsky.feed.post/3k");
        let post = json!({"uri": quoted_uri, "cid": CID, "author": {"did": DID}, "record": {"text": "q"},
            "labels": [], "likeCount": 1, "replyCount": 0, "repostCount": 0, "quoteCount": 1,
            "indexedAt": "2026-01-01T00:00:00.000Z"});
        let quoted = HashMap::from([(quoted_uri.clone(), post)]);
        let embed =
            json!({"$type": "app.bsky.embed.record", "record": {"uri": quoted_uri, "cid": CID}});
        let view = show(&embed, &quoted, 1).unwrap();
        assert_eq!(view["record"]["$type"], "app.bsky.embed.record#viewRecord");
        assert_eq!(view["record"]["value"], json!({"text": "q"}));
        assert_eq!(view["record"]["embeds"], json!([]));
        // Two levels down, no `embeds`.
        let deep = show(&embed, &quoted, 2).unwrap();
        assert!(deep["record"].get("embeds").is_none());
        let gone = json!({"$type": "app.bsky.embed.record",
            "record": {"uri": format!("at://{DID}/app.bsky.feed.post/gone"), "cid": CID}});
        assert_eq!(
            show(&gone, &quoted, 1).unwrap()["record"],
            json!({"$type": "app.bsky.embed.record#viewNotFound",
                   "uri": format!("at://{DID}/app.bsky.feed.post/gone"), "notFound": true})
        );
        assert_eq!(quoted_post(&embed), Some(quoted_uri.as_str()));
        // Placeholders, in the AppView's order: blocked, disabled by the
        // gate, not found, detached by the gate's list.
        use crate::api::bsky::gates::Detached;
        let view_of = |e: &Value, gate: QuoteState| {
            embed_view(&MediaUrls::default(), DID, e, &quoted, 1, gate).unwrap()["record"]["$type"]
                .clone()
        };
        let blocked = QuoteState {
            blocked: true,
            detached: Some(Detached::Disabled),
        };
        let disabled = QuoteState {
            blocked: false,
            detached: Some(Detached::Disabled),
        };
        let listed = QuoteState {
            blocked: false,
            detached: Some(Detached::Listed),
        };
        assert_eq!(
            view_of(&embed, blocked),
            "app.bsky.embed.record#viewBlocked"
        );
        assert_eq!(
            view_of(&embed, disabled),
            "app.bsky.embed.record#viewDetached"
        );
        assert_eq!(
            view_of(&embed, listed),
            "app.bsky.embed.record#viewDetached"
        );
        assert_eq!(
            view_of(&gone, disabled),
            "app.bsky.embed.record#viewDetached"
        );
        assert_eq!(view_of(&gone, listed), "app.bsky.embed.record#viewNotFound");
        // With media: the record half is typed only when it is a placeholder.
        let with_media = |uri: &str| {
            json!({"$type": "app.bsky.embed.recordWithMedia",
            "record": {"record": {"uri": uri, "cid": CID}},
            "media": {"$type": "app.bsky.embed.images", "images": []}})
        };
        let shown = show(&with_media(&quoted_uri), &quoted, 1).unwrap();
        assert!(shown["record"].get("$type").is_none());
        assert_eq!(
            shown["record"]["record"]["$type"],
            "app.bsky.embed.record#viewRecord"
        );
        assert_eq!(shown["media"]["$type"], "app.bsky.embed.images#view");
        let missing = show(
            &with_media("at://did:plc:x/app.bsky.feed.post/y"),
            &quoted,
            1,
        )
        .unwrap();
        assert_eq!(missing["record"]["$type"], "app.bsky.embed.record#view");
        assert_eq!(
            missing["record"]["record"]["$type"],
            "app.bsky.embed.record#viewNotFound"
        );
        // recordWithMedia without media the AppView shows: no embed.
        let odd = json!({"$type": "app.bsky.embed.recordWithMedia", "record": {"record": {"uri": quoted_uri}},
            "media": {"$type": "com.example.sticker"}});
        assert!(show(&odd, &quoted, 1).is_none());
    }
}
