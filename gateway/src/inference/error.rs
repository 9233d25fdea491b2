//! Errors in each API's shape, rendered in one place: OpenAI `{"error":{"message","type",
//! "code"}}` (bad requests 400), TGI and the HF Inference API `{"error","error_type"}` (bad
//! requests 422, like TGI's validation errors; `estimated_time` for a model still loading),
//! and the error events that end an SSE stream in either shape. `hub-models`' [`ModelError`]
//! and hub-infer's submit errors map to them here.

use super::JsonBody;
use crate::error::AppError;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use hub_infer::serve::{RegistryError, SubmitError};
use hub_models::{LoadError, LoadFailure, ModelError, Wait, error_chain};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    OpenAi,
    Tgi,
}

/// An error in the shape of the API it answers.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) api: Api,
    pub(super) status: StatusCode,
    /// OpenAI's `type` / TGI's `error_type`.
    pub(super) kind: &'static str,
    /// OpenAI's `code`.
    pub(super) code: Option<&'static str>,
    pub(super) message: String,
    /// The HF Inference API's `estimated_time` (seconds) of a model still loading.
    pub(super) estimated_time: Option<f64>,
}

impl ApiError {
    pub(super) fn new(api: Api, status: StatusCode, kind: &'static str, message: String) -> Self {
        Self {
            api,
            status,
            kind,
            code: None,
            message,
            estimated_time: None,
        }
    }

    pub(super) fn invalid(api: Api, message: impl Into<String>) -> Self {
        match api {
            Api::OpenAi => Self::new(
                api,
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                message.into(),
            ),
            Api::Tgi => Self::new(
                api,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                format!("Input validation error: {}", message.into()),
            ),
        }
    }

    pub(super) fn model_not_found(api: Api, model: &str) -> Self {
        let mut e = Self::new(
            api,
            StatusCode::NOT_FOUND,
            match api {
                Api::OpenAi => "invalid_request_error",
                Api::Tgi => "not_found",
            },
            format!("The model `{model}` does not exist or you do not have access to it."),
        );
        e.code = Some("model_not_found");
        e
    }

    pub(super) fn overloaded(api: Api) -> Self {
        Self::new(
            api,
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            "Model is overloaded".into(),
        )
    }

    pub(super) fn unavailable(api: Api, message: String) -> Self {
        Self::new(api, StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub(super) fn internal(api: Api, what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{what}");
        Self::new(
            api,
            StatusCode::INTERNAL_SERVER_ERROR,
            match api {
                Api::OpenAi => "server_error",
                Api::Tgi => "generation",
            },
            "internal error".into(),
        )
    }

    pub(super) fn from_app(api: Api, model: &str, e: AppError) -> Self {
        match e {
            AppError::RepoNotFound | AppError::RevisionNotFound(_) | AppError::NotFound => {
                Self::model_not_found(api, model)
            }
            AppError::Unauthorized(m) => Self::new(
                api,
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                m.into(),
            ),
            AppError::Forbidden(m) => Self::new(api, StatusCode::FORBIDDEN, "permission_error", m),
            e => Self::internal(api, "inference request", &e),
        }
    }

    /// The API's answer to a [`ModelError`] of `model` (the name the request gave).
    pub(super) fn from_model(api: Api, model: &str, e: ModelError) -> Self {
        match e {
            ModelError::NotFound => Self::model_not_found(api, model),
            ModelError::Loading {
                wait,
                waited,
                estimated,
            } => {
                let mut e = Self::unavailable(
                    api,
                    match wait {
                        Wait::Grace => format!("Model {model} is currently loading"),
                        Wait::Bounded => format!(
                            "Model {model} is still loading after {} s; retry later",
                            waited.as_secs()
                        ),
                    },
                );
                e.kind = "loading";
                e.estimated_time = Some(estimated.as_secs_f64());
                e
            }
            ModelError::Load(e) => load_error(api, model, &e),
            ModelError::LoaderStopped => Self::internal(api, "load model", &"loader stopped"),
            e @ ModelError::Evicted => {
                Self::unavailable(api, format!("cannot serve `{model}` now: {e}"))
            }
            e => Self::internal(api, "inference request", &e),
        }
    }

    pub(super) fn from_submit(api: Api, e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull => Self::overloaded(api),
            SubmitError::Closed => Self::unavailable(api, "model is shutting down".into()),
            e => Self::invalid(api, e.to_string()),
        }
    }

    pub(super) fn body(&self) -> Value {
        match self.api {
            Api::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": null,
            }}),
            Api::Tgi => {
                let mut v = json!({"error": self.message, "error_type": self.kind});
                if let Some(t) = self.estimated_time {
                    v["estimated_time"] = json!(t);
                }
                v
            }
        }
    }
}

/// An error in the shape of the API a path belongs to (OpenAI under `/v1/`, TGI and the HF
/// Inference API otherwise), for the compute mesh's routing layer.
pub(crate) fn api_error(
    path: &str,
    status: StatusCode,
    kind: &'static str,
    message: String,
    estimated_time: Option<f64>,
) -> Response {
    let api = if path.starts_with("/v1/") {
        Api::OpenAi
    } else {
        Api::Tgi
    };
    let mut e = ApiError::new(api, status, kind, message);
    e.estimated_time = estimated_time;
    e.into_response()
}

/// The event that ends an SSE stream whose generation failed, in the API's shape.
pub(super) fn stream_error(api: Api, message: &str) -> Value {
    match api {
        Api::OpenAi => json!({"error": {"message": message, "type": "server_error", "code": null}}),
        Api::Tgi => json!({"error": message, "error_type": "generation"}),
    }
}

/// The SSE event that ends a relayed stream whose serving node failed part way (OpenAI's shape,
/// `type: upstream_error`, for every route: the forwarder relays bytes and never re-renders
/// them), framed as `data: …` and its blank line.
pub(crate) fn upstream_stream_error(message: &str) -> axum::body::Bytes {
    let event = json!({"error": {"message": message, "type": "upstream_error", "code": null}});
    axum::body::Bytes::from(format!("data: {event}\n\n"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// The request body as `T`, or the API's 400/422 naming what is wrong with it.
pub(super) fn parse<T: DeserializeOwned>(api: Api, body: &JsonBody) -> Result<T, ApiError> {
    body.parse()
        .map_err(|e| ApiError::invalid(api, format!("invalid request body: {e}")))
}

pub(super) fn load_error(api: Api, name: &str, e: &LoadError) -> ApiError {
    match e {
        RegistryError::Load(LoadFailure::NotLocal(path)) => ApiError::unavailable(
            api,
            format!("the weights of `{name}` ({path}) are not on this node yet"),
        ),
        RegistryError::Load(LoadFailure::Model(e)) => {
            tracing::warn!(model = %name, error = %error_chain(&**e), "cannot load model");
            ApiError::new(
                api,
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported_model",
                // The cause names paths in the data directory: it goes to the log only.
                format!(
                    "the model `{name}` cannot be served by this node: unsupported or invalid model files"
                ),
            )
        }
        RegistryError::Load(LoadFailure::Io(e)) => ApiError::internal(api, "materialize model", e),
        RegistryError::Engine(e) => ApiError::internal(api, "start engine", e),
        RegistryError::TooLarge { needed, budget } => ApiError::new(
            api,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_model",
            format!(
                "the model `{name}` needs {} MiB of memory, more than this node's inference budget of {} MiB",
                needed >> 20,
                budget >> 20
            ),
        ),
        e @ RegistryError::Busy { .. } => {
            ApiError::unavailable(api, format!("cannot load `{name}` now: {e}"))
        }
        e @ (RegistryError::NotGeneration | RegistryError::Load(_)) => {
            ApiError::internal(api, "load model", e)
        }
    }
}
