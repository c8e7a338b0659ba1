//! Hostile guest: `check` is an honest rule (veto a title containing "veto",
//! keep the rest), but `check-batch` returns one outcome too many. The host
//! must not apply a miscounted batch, and must not fail its items either:
//! checked alone, each gets the rule's own verdict.
use tandem_rules_sdk::bindings::exports::tandem::rules::rule::Guest;
use tandem_rules_sdk::*;

struct Miscount;

fn judge(input: &Input) -> Outcome {
    if input.item.title.contains("veto") { Outcome::veto("the title says veto") } else { Outcome::keep() }
}

impl Guest for Miscount {
    fn check(input: Input) -> Outcome {
        judge(&input)
    }

    fn check_batch(batch: Batch) -> Vec<Outcome> {
        let mut outcomes = check_batch(&batch, judge);
        outcomes.push(Outcome::keep());
        outcomes
    }
}

tandem_rules_sdk::bindings::export_rule_plugin!(Miscount with_types_in tandem_rules_sdk::bindings);
