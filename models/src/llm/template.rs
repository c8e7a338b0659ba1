//! The chat template a GGUF file carries (`tokenizer.chat_template`, Jinja), rendered with
//! `minijinja` the way transformers renders it (`trim_blocks` and `lstrip_blocks` on,
//! Python's string methods available, `raise_exception`), so the prompt text is the one the
//! model was trained on: its default system prompt included when the conversation has none.

use anyhow::{Result, anyhow, bail};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::Serialize;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// Longest template source accepted (real ones are a few kB).
const MAX_TEMPLATE_BYTES: usize = 256 << 10;
/// Rendering stops after this many template instructions (a template that loops forever
/// is an error, not a hang).
const MAX_RENDER_FUEL: u64 = 5_000_000;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the texts the template sees as `bos_token` and
    /// `eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        if source.len() > MAX_TEMPLATE_BYTES {
            bail!("chat template is {} bytes (at most {MAX_TEMPLATE_BYTES})", source.len());
        }
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(syntax.map_err(|e| anyhow!("chat template syntax: {e}"))?);
        env.set_fuel(Some(MAX_RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", source.to_string()).map_err(|e| anyhow!("chat template does not parse: {e}"))?;
        Ok(ChatTemplate { env, bos: bos.to_string(), eos: eos.to_string() })
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template("chat").expect("added in new");
        template
            .render(context! {
                messages => Value::from(Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(|e| anyhow!("chat template failed to render: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template: a default system prompt when the conversation has none.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn a_user_turn_gets_the_default_system_prompt_and_the_assistant_turn() {
        let t = ChatTemplate::new(SMOLLM2, "", "<|im_end|>").unwrap();
        let text = t.render(&[Message::new("user", "hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = t.render(&[Message::new("system", "Be brief."), Message::new("user", "hi")], false).unwrap();
        assert_eq!(with_system, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n");
    }

    #[test]
    fn blocks_are_trimmed_and_python_methods_work_as_in_transformers() {
        let source = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() }}]\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        assert_eq!(t.render(&[Message::new("user", "  padded  ")], false).unwrap(), "[padded]\n");
    }

    #[test]
    fn template_errors_are_errors_not_panics() {
        let e = ChatTemplate::new("{% for %}", "", "").err().unwrap().to_string();
        assert!(e.contains("does not parse"), "{e}");
        let t = ChatTemplate::new("{{ raise_exception('only user and assistant roles') }}", "", "").unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("only user and assistant roles"), "{e}");
        let forever = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = forever.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("fuel") || e.contains("render"), "{e}");
    }
}
