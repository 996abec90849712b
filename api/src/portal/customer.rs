//! The portal's customer pages.

use actix_web::web;

pub fn configure(_config: &mut web::ServiceConfig) {}
