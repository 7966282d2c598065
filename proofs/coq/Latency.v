(** * Latency.v -- the closed forms of the single-draft latency model.

    Leviathan, Kalman, Matias 2023 (arXiv 2211.17192), §3: Eq. (1), Theorem 3.8, Theorem 3.11 and
    Corollary 3.9, for hsd_ref/latency/leviathan.py ([expected_tokens], [expected_tokens_from_prefix_probs],
    [walltime_factor], [ops_factor]).  With i.i.d. acceptance rate [a] and draft length [k]:
    - [geom_closed]: sum_{i<=k} a^i = (1 - a^(k+1)) / (1 - a) for a <> 1 ([geom_at_one]: k + 1 at a = 1);
    - [scan_tokens_geom]: the expected number of tokens of one forward scan (each draft accepted with
      chance [a], one recovered/bonus token at the end) is sum_{i<=k} a^i, which is also
      1 + sum_{i=1..k} P(first i drafts accepted) ([scan_tokens_prefix]);
    - [tokens_law_total], [tokens_law_mean]: the truncated geometric law of the tokens per iteration
      (P(L = l) = a^(l-1) (1 - a) for l <= k, P(L = k + 1) = a^k) sums to 1 and has that mean;
    - [walltime_factor_closed] (Theorem 3.8): E[L] / (k c + 1) = (1 - a^(k+1)) / ((1 - a)(k c + 1));
    - [ops_factor_closed] (Theorem 3.11);
    - [walltime_factor_k1], [speedup_iff] (Corollary 3.9): at k = 1 the factor is (1 + a) / (1 + c),
      greater than 1 iff a > c.
*)

From Coq Require Import Reals Lra Lia Bool.
Local Open Scope R_scope.

(** sum_{i=0}^{k} a^i *)
Fixpoint geom (a : R) (k : nat) : R :=
  match k with
  | O => 1
  | S k' => geom a k' + a ^ S k'
  end.

Lemma geom_mul (a : R) (k : nat) : (1 - a) * geom a k = 1 - a ^ S k.
Proof.
  induction k as [|k IH]; simpl geom.
  - simpl; lra.
  - rewrite Rmult_plus_distr_l, IH. simpl pow. ring.
Qed.

Theorem geom_closed (a : R) (k : nat) : a <> 1 -> geom a k = (1 - a ^ S k) / (1 - a).
Proof.
  intros Ha. rewrite <- geom_mul. field. lra.
Qed.

Theorem geom_at_one (k : nat) : geom 1 k = INR (S k).
Proof.
  induction k as [|k IH]; simpl geom; [simpl; lra|]. rewrite IH, pow1, (S_INR (S k)). lra.
Qed.

(** Expected tokens of one iteration: a forward scan over [k] drafts, each accepted with chance
    [a] given the earlier ones were; the scan emits the accepted drafts plus one token. *)
Fixpoint scan_tokens (a : R) (k : nat) : R :=
  match k with
  | O => 1                                              (* no draft left: the bonus token *)
  | S k' => (1 - a) * 1 + a * (1 + scan_tokens a k')    (* rejected: 1 token; accepted: 1 + rest *)
  end.

Theorem scan_tokens_geom (a : R) (k : nat) : scan_tokens a k = geom a k.
Proof.
  induction k as [|k IH]; [reflexivity|]. simpl scan_tokens. rewrite IH.
  (* 1 + a * geom a k = geom a (S k) *)
  clear IH. induction k as [|k IH2]; simpl geom; simpl pow.
  - lra.
  - simpl geom in IH2. simpl pow in IH2. nra.
Qed.

(** Eq. (1) without the i.i.d. reading: 1 + sum over i = 1..k of P(the first i drafts accepted). *)
Fixpoint prefix_sum (a : R) (k : nat) : R :=
  match k with O => 0 | S k' => prefix_sum a k' + a ^ S k' end.

Theorem scan_tokens_prefix (a : R) (k : nat) : scan_tokens a k = 1 + prefix_sum a k.
Proof.
  rewrite scan_tokens_geom. induction k as [|k IH]; simpl geom; simpl prefix_sum; [lra|]. lra.
Qed.

(** The truncated geometric law of the number [l] of tokens of one iteration. *)
Definition tokens_law (a : R) (k l : nat) : R :=
  if (l =? S k)%nat then a ^ k
  else if andb (1 <=? l)%nat (l <=? k)%nat then a ^ (l - 1) * (1 - a) else 0.

Fixpoint upto (F : nat -> R) (n : nat) : R :=   (* F 1 + ... + F n *)
  match n with O => 0 | S n' => upto F n' + F (S n') end.

Lemma upto_ext F G n : (forall l, (1 <= l <= n)%nat -> F l = G l) -> upto F n = upto G n.
Proof.
  induction n as [|n IH]; intros H; simpl; [reflexivity|].
  rewrite IH by (intros l Hl; apply H; lia). rewrite (H (S n)) by lia. reflexivity.
Qed.

Lemma upto_geom_mass (a : R) (k : nat) : upto (fun l => a ^ (l - 1) * (1 - a)) k = 1 - a ^ k.
Proof.
  induction k as [|k IH]; simpl upto; [simpl; lra|]. rewrite IH.
  rewrite Nat.sub_0_r. simpl pow. ring.
Qed.

Theorem tokens_law_total (a : R) (k : nat) : upto (tokens_law a k) (S k) = 1.
Proof.
  simpl upto. unfold tokens_law at 2. rewrite Nat.eqb_refl.
  rewrite (upto_ext _ (fun l => a ^ (l - 1) * (1 - a))).
  - rewrite upto_geom_mass. lra.
  - intros l Hl. unfold tokens_law.
    destruct (Nat.eqb_spec l (S k)) as [E|E]; [lia|].
    destruct (Nat.leb_spec 1 l); destruct (Nat.leb_spec l k); simpl; try lia; reflexivity.
Qed.

Lemma upto_geom_mean (a : R) (k : nat) :
  upto (fun l => INR l * (a ^ (l - 1) * (1 - a))) k + INR (S k) * a ^ k = geom a k.
Proof.
  induction k as [|k IH]; cbn [upto geom]; [simpl; lra|].
  replace (S k - 1)%nat with k by lia.
  assert (E : upto (fun l => INR l * (a ^ (l - 1) * (1 - a))) k = geom a k - INR (S k) * a ^ k) by lra.
  rewrite E. rewrite !S_INR. simpl pow. ring.
Qed.

Theorem tokens_law_mean (a : R) (k : nat) :
  upto (fun l => INR l * tokens_law a k l) (S k) = geom a k.
Proof.
  simpl upto. unfold tokens_law at 2. rewrite Nat.eqb_refl.
  rewrite (upto_ext _ (fun l => INR l * (a ^ (l - 1) * (1 - a)))).
  - apply upto_geom_mean.
  - intros l Hl. unfold tokens_law.
    destruct (Nat.eqb_spec l (S k)) as [E|E]; [lia|].
    destruct (Nat.leb_spec 1 l); destruct (Nat.leb_spec l k); simpl; try lia; reflexivity.
Qed.

(** Theorem 3.8: one iteration costs [k] draft steps of relative cost [c] plus one target step. *)
Definition walltime_factor (a : R) (k : nat) (c : R) : R := scan_tokens a k / (INR k * c + 1).

Theorem walltime_factor_closed (a : R) (k : nat) (c : R) :
  a <> 1 -> 0 <= c ->
  walltime_factor a k c = (1 - a ^ S k) / ((1 - a) * (INR k * c + 1)).
Proof.
  intros Ha Hc. unfold walltime_factor. rewrite scan_tokens_geom, geom_closed by exact Ha.
  assert (0 <= INR k) by apply pos_INR. assert (0 <= INR k * c) by (apply Rmult_le_pos; lra).
  field. split; lra.
Qed.

(** Theorem 3.11: expected factor of increase in arithmetic operations. *)
Definition ops_factor (a : R) (k : nat) (chat : R) : R := (INR k * chat + INR k + 1) / scan_tokens a k.

Theorem ops_factor_closed (a : R) (k : nat) (chat : R) :
  0 <= a < 1 ->
  ops_factor a k chat = (1 - a) * (INR k * chat + INR k + 1) / (1 - a ^ S k).
Proof.
  intros Ha. unfold ops_factor. rewrite scan_tokens_geom, geom_closed by lra.
  assert (0 < 1 - a ^ S k).
  { pose proof (pow_lt_1_compat a (S k) Ha (Nat.lt_0_succ k)). lra. }
  field. split; lra.
Qed.

(** Corollary 3.9: with one draft token the factor is (1 + a) / (1 + c), above 1 iff a > c. *)
Theorem walltime_factor_k1 (a c : R) : 0 <= c -> walltime_factor a 1 c = (1 + a) / (1 + c).
Proof. intros Hc. unfold walltime_factor. simpl scan_tokens. simpl INR. field. lra. Qed.

Theorem speedup_iff (a c : R) : 0 <= c -> (1 < walltime_factor a 1 c <-> c < a).
Proof.
  intros Hc. rewrite walltime_factor_k1 by exact Hc. split; intros H.
  - apply (Rmult_lt_compat_r (1 + c)) in H; [|lra].
    unfold Rdiv in H. rewrite Rmult_assoc, Rinv_l in H by lra. lra.
  - apply (Rmult_lt_reg_r (1 + c)); [lra|]. unfold Rdiv. rewrite Rmult_assoc, Rinv_l by lra. lra.
Qed.
