//! The XRPC error: atproto's envelope `{"error", "message"}` with a status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::index::store::StoreError;

/// An XRPC error: atproto's envelope `{"error", "message"}` with a status.
#[derive(Debug)]
pub struct XrpcError {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
}

impl XrpcError {
    pub fn invalid_request(message: impl Into<String>) -> XrpcError {
        XrpcError {
            status: StatusCode::BAD_REQUEST,
            error: "InvalidRequest",
            message: message.into(),
        }
    }
    pub fn named(error: &'static str, message: impl Into<String>) -> XrpcError {
        XrpcError {
            status: StatusCode::BAD_REQUEST,
            error,
            message: message.into(),
        }
    }
    pub fn not_implemented(nsid: &str) -> XrpcError {
        XrpcError {
            status: StatusCode::NOT_IMPLEMENTED,
            error: "MethodNotImplemented",
            message: format!("Method Not Implemented: {nsid}"),
        }
    }
    pub fn internal(message: impl Into<String>) -> XrpcError {
        XrpcError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "InternalServerError",
            message: message.into(),
        }
    }
}

impl From<StoreError> for XrpcError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error while serving");
        XrpcError::internal("Internal Server Error")
    }
}

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.error, "message": self.message })),
        )
            .into_response()
    }
}
