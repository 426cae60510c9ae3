//! The provider's few HTML pages. Every page carries the development banner
//! so nobody mistakes this for a real login.

/// Escapes text for HTML element content and double-quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A whole page: `body` is already HTML, `title` is text.
pub(crate) fn page(title: &str, body: &str) -> String {
    let title = escape(title);
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — portcullis development provider</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 36rem; margin: 2rem auto; padding: 0 1rem; }}
.banner {{ background: #b00020; color: #fff; padding: .75rem 1rem; border-radius: .5rem; font-weight: 600; }}
.error {{ color: #b00020; }}
button {{ display: block; width: 100%; margin: .5rem 0; padding: .75rem; text-align: left; font-size: 1rem; }}
button.cancel {{ text-align: center; }}
small {{ color: #555; }}
</style>
</head>
<body>
<p class="banner">Development OpenID provider for <code>portcullis demo</code> and tests.
NOT FOR PRODUCTION: there are no passwords, anyone can sign in as anyone.</p>
<h1>{title}</h1>
{body}
</body>
</html>
"#
    )
}
