//! Where login and logout may send the browser back to (`rd`,
//! `post_logout_redirect_uri`).
