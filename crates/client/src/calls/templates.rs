//! Templates: named create settings.

use super::*;

impl Client {
    /// `GET /templates`.
    pub async fn list_templates(&self) -> Result<Vec<api::Template>> {
        self.get("/templates", "template list").await
    }

    /// `POST /templates`.
    pub async fn create_template(&self, t: &api::Template) -> Result<api::Template> {
        self.call(Method::POST, "/templates", Some(t), "template")
            .await
    }

    /// `GET /templates/:id`.
    pub async fn get_template(&self, id: &str) -> Result<api::Template> {
        self.get(&format!("/templates/{}", encode_component(id)), "template")
            .await
    }

    /// `DELETE /templates/:id`.
    pub async fn delete_template(&self, id: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/templates/{}", encode_component(id)))
            .await
    }
}
