//! The portal's admin pages.

use actix_web::web;

pub fn configure(_config: &mut web::ServiceConfig) {}
