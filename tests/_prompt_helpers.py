"""What the prompt tests share (tests/test_prompts.py, tests/test_soft_prompts.py): a batch with a padded row, a few real
training steps, and the check that `generate` on a left-padded batch means each prompt decoded alone."""
import torch

G = torch.Generator().manual_seed(0)
X = {"input_ids": torch.randint(3, 99, (3, 9), generator=G), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
X["attention_mask"][0, 6:] = 0   # one right-padded row: the mask must be extended, not replaced

def train(model, steps=4, lr=5e-2):
    "A few real optimizer steps on the causal LM loss, so the prompt moves off its init."
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**X, labels=X["input_ids"]).loss
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()

def gap(a, b)->float:
    "max |Δlogits| of two models on X."
    with torch.no_grad(): return (a(**X).logits - b(**X).logits).abs().max().item()

def greedy_alone(pm, ids, steps):
    "Greedy decoding of one unpadded prompt by full forward passes, no cache: what generate must mean."
    seq, logits = ids[None], []
    for _ in range(steps):
        z = pm(seq).logits[0, -1]; logits.append(z); seq = torch.cat([seq, z.argmax()[None, None]], 1)
    return seq[0, len(ids):], torch.stack(logits)

def check_generate_left_padded(pm, new=6, atol=1e-5):
    "Greedy `generate` with the KV cache on a left-padded batch of three prompts equals each prompt decoded alone (tokens, and logits within atol); the adapter is in the computation (the base generates something else)."
    prompts = [torch.randint(3, 99, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 8, 5)]
    T_ = max(map(len, prompts))
    ids = torch.stack([torch.cat([torch.zeros(T_ - len(p), dtype=torch.long), p]) for p in prompts])
    mask = (torch.arange(T_)[None] >= torch.tensor([T_ - len(p) for p in prompts])[:, None]).long()
    with torch.no_grad():
        out = pm.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                          output_logits=True, return_dict_in_generate=True)
        assert out.sequences.shape == (3, T_ + new) and torch.equal(out.sequences[:, :T_], ids)   # the placeholders are gone
        for i, p in enumerate(prompts):
            toks, z = greedy_alone(pm, p, new)
            assert torch.equal(out.sequences[i, T_:], toks)
            assert (torch.stack([s[i] for s in out.logits]) - z).abs().max().item() <= atol
        with pm.disable_adapter(): plain = pm.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    assert not torch.equal(plain, out.sequences)
