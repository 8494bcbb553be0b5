//! Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template`, or `chat_template` in
//! `tokenizer_config.json`) rendered with minijinja and Python-style string methods, or a built-in one
//! named in the manifest.

use minijinja::{Environment, ErrorKind, context};

/// The built-in templates a manifest may name.
pub const BUILTINS: [&str; 5] = ["chatml", "llama2", "llama3", "mistral", "plain"];

fn builtin(name: &str) -> Option<&'static str> {
    Some(match name {
        // Qwen and many fine-tunes.
        "chatml" => {
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        }
        "llama3" => {
            "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n\
             {{ m.content | trim }}<|eot_id|>{% endfor %}\
             {% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
        }
        "llama2" => {
            "{% set sys = messages | selectattr('role', 'eq', 'system') | map(attribute='content') | first %}\
             {% for m in messages if m.role == 'user' %}{{ bos_token }}[INST] \
             {% if loop.first and sys %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}{{ m.content | trim }} [/INST]\
             {% endfor %}"
        }
        "mistral" => {
            "{% set sys = messages | selectattr('role', 'eq', 'system') | map(attribute='content') | first %}\
             {{ bos_token }}{% for m in messages if m.role == 'user' %}[INST] \
             {% if loop.first and sys %}{{ sys }}\n\n{% endif %}{{ m.content | trim }} [/INST]{% endfor %}"
        }
        "plain" => {
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{% if not loop.last %}\n\n{% endif %}{% endfor %}"
        }
        _ => return None,
    })
}

/// A compiled chat template with the tokenizer's BOS and EOS strings.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for the output artifact and errors (`gguf`, `builtin:chatml`, …).
    pub origin: String,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("origin", &self.origin).finish()
    }
}

impl ChatTemplate {
    /// `configured`: the manifest's `chat_template` (a built-in name or Jinja source); `shipped`: the
    /// model's own template. The manifest wins, then the model's, then `plain`.
    pub fn new(configured: Option<&str>, shipped: Option<String>, bos: &str, eos: &str) -> Result<Self, String> {
        let (source, origin) = match (configured, shipped) {
            (Some(name), _) if builtin(name).is_some() => {
                (builtin(name).expect("checked").to_string(), format!("builtin:{name}"))
            }
            (Some(src), _) if src.contains("{{") || src.contains("{%") => (src.to_string(), "manifest".to_string()),
            (Some(other), _) => {
                return Err(format!(
                    "chat_template `{other}` is neither a built-in ({}) nor a Jinja template",
                    BUILTINS.join(", ")
                ));
            }
            (None, Some(src)) => (src, "model".to_string()),
            (None, None) => (builtin("plain").expect("builtin").to_string(), "builtin:plain".to_string()),
        };
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", source).map_err(|e| format!("chat template ({origin}) does not parse: {e}"))?;
        Ok(ChatTemplate { env, origin, bos: bos.to_string(), eos: eos.to_string() })
    }

    /// The prompt text for one system message (optional) and one user message, ready for generation.
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String, String> {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system.filter(|s| !s.is_empty()) {
            messages.push(context! { role => "system", content => system });
        }
        messages.push(context! { role => "user", content => user });
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            })
            .map_err(|e| format!("chat template ({}) failed: {e}", self.origin))
    }
}

/// The chat template in a `tokenizer_config.json`: a string, or a list of named templates (`default` wins).
pub fn from_tokenizer_config(json: &serde_json::Value) -> Option<String> {
    match json.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let named = |n: &str| {
                list.iter().find(|t| t.get("name").and_then(|v| v.as_str()) == Some(n))?.get("template")?.as_str()
            };
            named("default").or_else(|| list.first()?.get("template")?.as_str()).map(str::to_string)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_render_system_and_user() {
        let t = ChatTemplate::new(Some("chatml"), None, "", "<|im_end|>").unwrap();
        assert_eq!(
            t.render(Some("Be brief."), "Hi").unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let t = ChatTemplate::new(Some("llama2"), None, "<s>", "</s>").unwrap();
        assert_eq!(t.render(Some("S"), "U").unwrap(), "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]");
        assert_eq!(t.render(None, "U").unwrap(), "<s>[INST] U [/INST]");
        let t = ChatTemplate::new(Some("mistral"), None, "<s>", "</s>").unwrap();
        assert_eq!(t.render(Some("S"), " U ").unwrap(), "<s>[INST] S\n\nU [/INST]");
        let t = ChatTemplate::new(Some("llama3"), None, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert!(t.render(None, "U").unwrap().ends_with("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"));
        let t = ChatTemplate::new(None, None, "<s>", "</s>").unwrap();
        assert_eq!(t.origin, "builtin:plain");
        assert_eq!(t.render(Some("S"), "U").unwrap(), "<s>S\n\nU");
    }

    #[test]
    fn shipped_templates_with_python_methods_and_exceptions() {
        // The shape of templates found in real tokenizer_config.json files.
        let shipped = "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'].strip() %}\
            {% else %}{% set sys = '' %}{% endif %}{% for m in messages %}\
            {% if m['role'] not in ['system', 'user'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}\
            {% if m['role'] == 'user' %}{{ bos_token }}USER: {{ sys.upper() }}|{{ m['content'] }}{{ eos_token }}{% endif %}\
            {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}";
        let t = ChatTemplate::new(None, Some(shipped.into()), "<s>", "</s>").unwrap();
        assert_eq!(t.origin, "model");
        assert_eq!(t.render(Some(" be kind "), "hello").unwrap(), "<s>USER: BE KIND|hello</s>ASSISTANT:");
        let raising =
            ChatTemplate::new(None, Some("{{ raise_exception('no system prompts') }}".into()), "", "").unwrap();
        assert!(raising.render(None, "x").unwrap_err().contains("no system prompts"));
    }

    #[test]
    fn bad_templates_are_clear_errors() {
        assert!(ChatTemplate::new(Some("vicuna"), None, "", "").unwrap_err().contains("neither a built-in"));
        assert!(ChatTemplate::new(Some("{% for %}"), None, "", "").unwrap_err().contains("does not parse"));
    }

    #[test]
    fn tokenizer_config_templates() {
        let one = serde_json::json!({"chat_template": "{{ x }}"});
        assert_eq!(from_tokenizer_config(&one).as_deref(), Some("{{ x }}"));
        let many = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
        assert_eq!(from_tokenizer_config(&many).as_deref(), Some("D"));
        assert_eq!(from_tokenizer_config(&serde_json::json!({})), None);
    }
}
