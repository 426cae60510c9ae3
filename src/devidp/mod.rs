//! A development OpenID provider for the demo and fast tests. NOT FOR PRODUCTION.
