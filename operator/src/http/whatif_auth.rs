//! Who may ask what-if questions: a bearer token the API server authenticates (TokenReview), whose user
//! the API server authorizes (SubjectAccessReview) to `create` the `whatif` subresource of the budget
//! asked about (`powerbudgets/whatif` in group `kilowatt.dev`), as `kubectl auth can-i create
//! powerbudgets/whatif --subresource` would answer. Does Kubernetes IO; the verdicts on the reviews are
//! pure functions.

use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::api::{Api, PostParams};

/// The API group, resource, subresource and verb a what-if is authorized as.
pub const GROUP: &str = "kilowatt.dev";
pub const RESOURCE: &str = "powerbudgets";
pub const SUBRESOURCE: &str = "whatif";
pub const VERB: &str = "create";

/// Why a what-if question is not answered for this caller.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error(
        "what-if questions on this listener need a bearer token (Authorization: Bearer …) of a user \
         allowed to {VERB} {RESOURCE}/{SUBRESOURCE} in group {GROUP}"
    )]
    NoToken,
    #[error("the token is not valid: {reason}")]
    Unauthenticated { reason: String },
    #[error(
        "{user} may not {VERB} {RESOURCE}/{SUBRESOURCE} (group {GROUP}) of budget {budget:?}{reason}"
    )]
    Forbidden {
        user: String,
        budget: String,
        /// The authorizer's reason, with a leading ": ", or empty.
        reason: String,
    },
    #[error("reviewing the caller with the API server")]
    Review(#[source] kube::Error),
}

impl Denied {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Denied::NoToken | Denied::Unauthenticated { .. } => "unauthenticated",
            Denied::Forbidden { .. } => "forbidden",
            Denied::Review(_) => "unavailable",
        }
    }
}

/// The user a reviewed token belongs to.
pub fn user_of(status: &TokenReviewStatus) -> Result<UserInfo, Denied> {
    let user = status.user.clone().unwrap_or_default();
    if status.authenticated == Some(true) && user.username.as_deref().is_some_and(|u| !u.is_empty())
    {
        Ok(user)
    } else {
        Err(Denied::Unauthenticated {
            reason: status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the API server did not authenticate it".to_owned()),
        })
    }
}

/// The question put to the authorizer: may `user` ask what-if questions of `budget`?
pub fn access_review(user: &UserInfo, budget: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.to_owned()),
                resource: Some(RESOURCE.to_owned()),
                subresource: Some(SUBRESOURCE.to_owned()),
                verb: Some(VERB.to_owned()),
                name: Some(budget.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// The authorizer's verdict: allowed, or why not.
pub fn verdict(
    status: &SubjectAccessReviewStatus,
    user: &UserInfo,
    budget: &str,
) -> Result<(), Denied> {
    if status.allowed && status.denied != Some(true) {
        return Ok(());
    }
    let reason = status
        .reason
        .as_deref()
        .or(status.evaluation_error.as_deref())
        .filter(|r| !r.is_empty())
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    Err(Denied::Forbidden {
        user: user.username.clone().unwrap_or_default(),
        budget: budget.to_owned(),
        reason,
    })
}

/// Authenticates `token` and authorizes its user to ask about `budget`; returns the user's name.
pub async fn authorize(client: &kube::Client, token: &str, budget: &str) -> Result<String, Denied> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: None,
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(Denied::Review)?;
    let user = user_of(&reviewed.status.unwrap_or_default())?;
    let decided = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &access_review(&user, budget))
        .await
        .map_err(Denied::Review)?;
    verdict(&decided.status.unwrap_or_default(), &user, budget)?;
    Ok(user.username.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn alice() -> UserInfo {
        UserInfo {
            username: Some("alice".into()),
            groups: Some(vec!["capacity-planners".into()]),
            uid: Some("u-1".into()),
            extra: Some(BTreeMap::from([("scope".into(), vec!["x".into()])])),
        }
    }

    #[test]
    fn only_an_authenticated_named_user_passes_the_token_review() {
        let ok = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(alice()),
            ..TokenReviewStatus::default()
        };
        assert_eq!(
            user_of(&ok).expect("user").username.as_deref(),
            Some("alice")
        );
        let expired = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..TokenReviewStatus::default()
        };
        let denied = user_of(&expired).expect_err("denied");
        assert!(denied.to_string().contains("token has expired"), "{denied}");
        assert_eq!(denied.category(), "unauthenticated");
        let nameless = TokenReviewStatus {
            authenticated: Some(true),
            ..TokenReviewStatus::default()
        };
        assert!(user_of(&nameless).is_err());
    }

    #[test]
    fn the_access_review_asks_for_the_whatif_subresource_of_the_budget_as_the_user() {
        let review = access_review(&alice(), "row-1");
        assert_eq!(review.spec.user.as_deref(), Some("alice"));
        assert_eq!(review.spec.groups, Some(vec!["capacity-planners".into()]));
        assert_eq!(review.spec.uid.as_deref(), Some("u-1"));
        assert!(review.spec.extra.is_some());
        let attributes = review.spec.resource_attributes.expect("resource");
        assert_eq!(attributes.group.as_deref(), Some("kilowatt.dev"));
        assert_eq!(attributes.resource.as_deref(), Some("powerbudgets"));
        assert_eq!(attributes.subresource.as_deref(), Some("whatif"));
        assert_eq!(attributes.verb.as_deref(), Some("create"));
        assert_eq!(attributes.name.as_deref(), Some("row-1"));
        assert_eq!(attributes.namespace, None, "budgets are cluster-scoped");
    }

    #[test]
    fn a_denial_names_the_user_the_budget_and_the_authorizers_reason() {
        let allowed = SubjectAccessReviewStatus {
            allowed: true,
            ..SubjectAccessReviewStatus::default()
        };
        assert!(verdict(&allowed, &alice(), "rack").is_ok());
        let denied = SubjectAccessReviewStatus {
            allowed: false,
            reason: Some("no RBAC policy matched".into()),
            ..SubjectAccessReviewStatus::default()
        };
        let error = verdict(&denied, &alice(), "rack").expect_err("denied");
        let message = error.to_string();
        assert!(
            message.contains("alice")
                && message.contains("\"rack\"")
                && message.contains("no RBAC policy matched"),
            "{message}"
        );
        assert_eq!(error.category(), "forbidden");
        let explicitly = SubjectAccessReviewStatus {
            allowed: true,
            denied: Some(true),
            ..SubjectAccessReviewStatus::default()
        };
        assert!(verdict(&explicitly, &alice(), "rack").is_err());
    }
}
