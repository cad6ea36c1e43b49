//! Pages of lists ordered by a linking record's key: the opaque cursor
//! (the last item's record key and DID) and the cut of a fetched page.

use data_encoding::BASE64URL_NOPAD;

use super::XrpcError;

/// A page position: the (rkey, did) of the last item returned.
pub fn encode_cursor(rkey: &str, did: &str) -> String {
    BASE64URL_NOPAD.encode(format!("{rkey} {did}").as_bytes())
}

pub fn decode_cursor(raw: Option<&str>) -> Result<Option<(String, String)>, XrpcError> {
    let Some(raw) = raw else { return Ok(None) };
    let bad =
        || XrpcError::invalid_request("Error: Params/cursor is not a cursor this server issued");
    let bytes = BASE64URL_NOPAD.decode(raw.as_bytes()).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (rkey, did) = text.split_once(' ').ok_or_else(bad)?;
    Ok(Some((rkey.to_string(), did.to_string())))
}

/// Cuts `rows` (fetched with `limit + 1`) to the page and returns the cursor
/// of the next page, if there is one: `cursor` of the page's last row.
pub fn cut_page<T>(rows: &mut Vec<T>, limit: i64, cursor: impl Fn(&T) -> String) -> Option<String> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    more.then(|| rows.last().map(cursor)).flatten()
}
