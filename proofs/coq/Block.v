(** * Block.v -- block verification (= HSD with capped branch resampling) is lossless.

    Sun, Mendlovic, Leviathan, Aharoni, Ro, Beirami, Suresh, "Block Verification Accelerates
    Speculative Decoding" (arXiv 2403.10444, Alg. 2); per draft identical to Zhou et al.'s HSD
    Alg. 2 (arXiv 2601.05724; papers.md §3.4).  Mirrors hsd_ref/schemes/block.py ([Block.plan],
    the "backward" scan of hsd_ref/scheme.py).

    One iteration from context [c] with draft [x_1 .. x_k] (sampled from [q] up front):
    - clamped ratios (Lindley recursion, hsd_ref [clamped_ratios]):
      pi_0 = 1, pi_i = min(1, pi_{i-1} p_i(x_i) / q_i(x_i)), and pi_i = 0 when q_i(x_i) = 0;
    - for a level i < k: S_i = sum_v max(pi_i p_{i+1}(v) - q_{i+1}(v), 0) (rows after x_1..x_i) and
      h_i = S_i / (S_i + 1 - pi_i) (1 when the denominator is 0); the last level has h_k = pi_k;
    - tau = the largest level i >= 1 whose independent test (chance h_i) succeeds, 0 if none does:
      P(tau = i) = h_i (1 - h_{i+1}) .. (1 - h_k), P(tau = 0) = (1 - h_1) .. (1 - h_k);
    - emit x_1 .. x_tau, then the bonus token from p_{k+1} if tau = k, otherwise a token from
      norm(max(pi_tau p_{tau+1} - q_{tau+1}, 0)) (the target row when that is empty).
    Below, [none_above c pi xs] is the chance that every test above the current level fails and
    [above G xs c pi] the part of the law where tau lies above the current level; [blk_verify] adds
    the level-0 outcome.

    The proof is the telescoping argument of papers.md §2-§3 in recursive form:
    - [none_avg]: averaged over the drafts above it, the chance that the scan reaches level i is
      S_i + 1 - pi_i (= sum_v max(q_{i+1}(v) - pi_i p_{i+1}(v), 0)), and 1 at the last level;
    - [level_avg]: averaged over the drafts above it, everything emitted from level i on (stopping
      at i or above) is pi_i times target sampling; at level 0 (pi_0 = 1, and h = 1 there) this is
      target sampling.
    Main results: [block_iteration_lossless] (every draft length [k]) and [block_lossless] (the
    decoding loop, every horizon).
*)

From Coq Require Import Reals Lra Lia List.
From HSD Require Import Common.
Import ListNotations.
Local Open Scope R_scope.

Section Block.
Context {A : Type} (vocab : list A) (p q : Model A).

Local Notation vsum := (vsum vocab).
Local Notation target := (target vocab p).

(** hsd_ref [clamped_ratios]: one step of the Lindley recursion. *)
Definition clamp (c : list A) (pi : R) (x : A) : R :=
  if Req_EM_T (q c x) 0 then 0 else Rmin 1 (pi * p c x / q c x).

(** hsd_ref [positive_part(target_probs[i], draft_probs[i], pis[i])] and its sum [s_i]. *)
Definition bexcess (c : list A) (pi : R) (v : A) : R := Rmax (pi * p c v - q c v) 0.
Definition bS (c : list A) (pi : R) : R := vsum (bexcess c pi).

(** The test chance at an intermediate level: [s_i / reach], 1 when [reach = 0]. *)
Definition hmid (c : list A) (pi : R) : R :=
  if Req_EM_T (bS c pi + 1 - pi) 0 then 1 else bS c pi / (bS c pi + 1 - pi).

(** The test chance at a level with [nabove] draft tokens above it: pi_k at the last level. *)
Definition hlev (c : list A) (pi : R) (nabove : nat) : R :=
  match nabove with O => pi | S _ => hmid c pi end.

(** hsd_ref [residual_or_target(excess[j], target_probs[j])]. *)
Definition bresidual (c : list A) (pi : R) (v : A) : R :=
  if Req_EM_T (bS c pi) 0 then p c v else bexcess c pi v / bS c pi.

(** The token emitted when the scan stops at a level ([emit] of hsd_ref's plan), then [G]. *)
Definition bemit (G : Kont A) (c : list A) (pi : R) (nabove : nat) (n : nat) (f : list A -> R) : R :=
  match nabove with
  | O => vsum (fun v => p c v * emit v G c n f)                 (* bonus token *)
  | S _ => vsum (fun v => bresidual c pi v * emit v G c n f)    (* recovered token *)
  end.

(** Chance that the tests of every level above the current one fail ([xs]: the drafts above). *)
Fixpoint none_above (c : list A) (pi : R) (xs : list A) : R :=
  match xs with
  | [] => 1
  | x :: xs' =>
      let pi' := clamp c pi x in
      (1 - hlev (c ++ [x]) pi' (length xs')) * none_above (c ++ [x]) pi' xs'
  end.

(** The law of the outcomes whose [tau] lies above the current level: at the next level [x] is
    emitted, then either [tau] lies higher still, or the next level's test succeeds while every
    test above it fails. *)
Fixpoint above (G : Kont A) (xs : list A) (c : list A) (pi : R) (n : nat) (f : list A -> R) : R :=
  match xs with
  | [] => 0
  | x :: xs' =>
      let pi' := clamp c pi x in
      emit x (fun c' n' f' =>
                above G xs' c' pi' n' f'
                + hlev c' pi' (length xs') * none_above c' pi' xs' * bemit G c' pi' (length xs') n' f')
        c n f
  end.

(** Verification of one draft: [tau] above level 0, or [tau = 0] (every test failed). *)
Definition blk_verify (G : Kont A) (xs : list A) (c : list A) (n : nat) (f : list A -> R) : R :=
  above G xs c 1 n f + none_above c 1 xs * bemit G c 1 (length xs) n f.

Definition blk_iteration (k : nat) : Iteration :=
  fun G c n f => draft_avg vocab q k c (fun xs => blk_verify G xs c n f).

Hypothesis Hp : is_model vocab p.
Hypothesis Hq : is_model vocab q.

Lemma clamp_mass c pi x : 0 <= pi -> q c x * clamp c pi x = Rmin (q c x) (pi * p c x).
Proof.
  intros Hpi. unfold clamp. destruct (Hp c) as [Hppos _]; destruct (Hq c) as [Hqpos _].
  specialize (Hppos x); specialize (Hqpos x).
  assert (0 <= pi * p c x) by (apply Rmult_le_pos; lra).
  destruct (Req_EM_T (q c x) 0) as [H0|H0].
  - rewrite H0. unfold Rmin. destruct (Rle_dec 0 (pi * p c x)); lra.
  - apply accept_mass; lra.
Qed.

Lemma clamp_range c pi x : 0 <= pi -> 0 <= clamp c pi x <= 1.
Proof.
  intros Hpi. unfold clamp. destruct (Req_EM_T (q c x) 0) as [H0|H0]; [lra|].
  destruct (Hp c) as [Hppos _]; destruct (Hq c) as [Hqpos _].
  specialize (Hppos x); specialize (Hqpos x).
  assert (0 <= pi * p c x / q c x).
  { unfold Rdiv. apply Rmult_le_pos; [apply Rmult_le_pos; lra|]. left; apply Rinv_0_lt_compat; lra. }
  unfold Rmin. destruct (Rle_dec 1 (pi * p c x / q c x)); lra.
Qed.

Lemma bS_nonneg c pi : 0 <= bS c pi.
Proof. apply vsum_nonneg; intros v; apply Rmax_nonneg. Qed.

Lemma bexcess_le_bS c pi v : In v vocab -> bexcess c pi v <= bS c pi.
Proof. intros Hin. apply lsum_term_le; [intros y; apply Rmax_nonneg|exact Hin]. Qed.

(** The draft mass that the next level cannot keep: sum_v max(q(v) - pi p(v), 0) = S + 1 - pi. *)
Lemma deficit_sum c pi :
  vsum (fun v => q c v - Rmin (q c v) (pi * p c v)) = bS c pi + 1 - pi.
Proof.
  destruct (Hp c) as [_ Hp1]; destruct (Hq c) as [_ Hq1].
  unfold bS, bexcess.
  rewrite (vsum_ext vocab _ (fun v => (q c v - pi * p c v) + Rmax (pi * p c v - q c v) 0)).
  - rewrite (vsum_plus vocab (fun v => q c v - pi * p c v) (fun v => Rmax (pi * p c v - q c v) 0)).
    rewrite (vsum_minus vocab (q c) (fun v => pi * p c v)), (vsum_scal_l vocab pi (p c)).
    rewrite Hp1, Hq1. lra.
  - intros v. pose proof (min_plus_excess (pi * p c v) (q c v)). rewrite Rmin_comm. lra.
Qed.

(** Reach probability, averaged over the drafts above the level. *)
Lemma none_avg j : forall c pi, 0 <= pi <= 1 ->
  draft_avg vocab q j c (none_above c pi)
  = match j with O => 1 | S _ => bS c pi + 1 - pi end.
Proof.
  induction j as [|j IH]; intros c pi Hpi.
  - rewrite draft_avg_0. reflexivity.
  - rewrite draft_avg_S. simpl none_above.
    transitivity (vsum (fun x => q c x - Rmin (q c x) (pi * p c x))); [|apply deficit_sum].
    apply vsum_ext; intros x.
    set (pi' := clamp c pi x). pose proof (clamp_range c pi x (proj1 Hpi)) as Hr. fold pi' in Hr.
    rewrite (draft_avg_ext vocab q _ _ _ (fun xs => (1 - hlev (c ++ [x]) pi' j) * none_above (c ++ [x]) pi' xs))
      by (intros xs Hl; rewrite Hl; reflexivity).
    rewrite draft_avg_scal, IH by exact Hr.
    rewrite <- clamp_mass by lra. fold pi'.
    assert (E : (1 - hlev (c ++ [x]) pi' j) * (match j with O => 1 | S _ => bS (c ++ [x]) pi' + 1 - pi' end)
                = 1 - pi').
    { destruct j as [|j]; simpl; [lra|]. unfold hmid.
      pose proof (bS_nonneg (c ++ [x]) pi').
      destruct (Req_EM_T (bS (c ++ [x]) pi' + 1 - pi') 0) as [H0|H0]; [lra|]. field. exact H0. }
    rewrite E. lra.
Qed.

(** hmid c 1 = 1: at level 0 the "test" always succeeds (tau = 0 when no higher test does). *)
Lemma hlev_one c j : hlev c 1 j = 1.
Proof.
  destruct j; simpl; [reflexivity|]. unfold hmid.
  destruct (Req_EM_T (bS c 1 + 1 - 1) 0) as [H0|H0]; [reflexivity|]. field. lra.
Qed.

Lemma emit_scal (a : A) (r : R) (K : Kont A) c n f :
  emit a (fun c' n' f' => r * K c' n' f') c n f = r * emit a K c n f.
Proof. unfold emit; destruct n; reflexivity. Qed.

(** Everything emitted from a level on (stop there or above), averaged over the drafts above it,
    is [pi] times target sampling, when what runs afterwards agrees with the target. *)
Lemma level_avg G m : agree vocab p m G ->
  forall j c pi n f, 0 <= pi <= 1 -> (n <= S m)%nat ->
  draft_avg vocab q j c
    (fun xs => above G xs c pi n f + hlev c pi (length xs) * none_above c pi xs * bemit G c pi (length xs) n f)
  = pi * target c n f.
Proof.
  intros HG j. induction j as [|j IH]; intros c pi n f Hpi Hn.
  - rewrite draft_avg_0. simpl. rewrite (target_step vocab p c n f (Hp c)).
    rewrite (vsum_ext vocab _ (fun v => p c v * emit v (Common.target vocab p) c n f))
      by (intros v; rewrite (emit_agree vocab p m G v c n f HG Hn); reflexivity).
    lra.
  - set (T := fun v => emit v (Common.target vocab p) c n f).
    rewrite draft_avg_plus.
    (* stopping above this level *)
    assert (Habove : draft_avg vocab q (S j) c (fun xs => above G xs c pi n f)
                     = vsum (fun x => Rmin (q c x) (pi * p c x) * T x)).
    { rewrite draft_avg_S. apply vsum_ext; intros x. simpl above.
      rewrite draft_avg_emit.
      set (pi' := clamp c pi x). pose proof (clamp_range c pi x (proj1 Hpi)) as Hr. fold pi' in Hr.
      rewrite (emit_ext x _ (fun c' n' f' => pi' * Common.target vocab p c' n' f')).
      - rewrite emit_scal, <- Rmult_assoc. unfold pi'. rewrite clamp_mass by lra. reflexivity.
      - intros n' f' Hn'. apply IH; [exact Hr|lia]. }
    (* stopping at this level *)
    assert (Hhere : draft_avg vocab q (S j) c
                      (fun xs => hlev c pi (length xs) * none_above c pi xs * bemit G c pi (length xs) n f)
                    = vsum (fun v => bexcess c pi v * T v)).
    { rewrite (draft_avg_ext vocab q _ _ _ (fun xs => (hmid c pi * bemit G c pi (S j) n f) * none_above c pi xs))
        by (intros xs Hl; rewrite Hl; simpl; lra).
      rewrite draft_avg_scal, none_avg by exact Hpi. simpl bemit.
      transitivity (vsum (fun v => (hmid c pi * (bS c pi + 1 - pi)) * (bresidual c pi v * emit v G c n f))).
      { rewrite (vsum_scal_l vocab). lra. }
      apply vsum_ext_in; intros v Hin. unfold T. rewrite (emit_agree vocab p m G v c n f HG Hn).
      assert (E : hmid c pi * (bS c pi + 1 - pi) * bresidual c pi v = bexcess c pi v).
      { pose proof (bS_nonneg c pi) as H0. pose proof (bexcess_le_bS c pi v Hin) as H1.
        pose proof (Rmax_nonneg (pi * p c v - q c v)) as H2. fold (bexcess c pi v) in H2.
        unfold hmid, bresidual.
        destruct (Req_EM_T (bS c pi + 1 - pi) 0) as [Hd|Hd];
          destruct (Req_EM_T (bS c pi) 0) as [Hs|Hs].
        - rewrite Hd. assert (bexcess c pi v = 0) by lra. lra.
        - lra.
        - assert (bexcess c pi v = 0) by lra. rewrite Hs. unfold Rdiv. lra.
        - field. split; assumption. }
      rewrite <- E. lra. }
    rewrite Habove, Hhere, <- vsum_plus.
    rewrite (target_step vocab p c n f (Hp c)), <- vsum_scal_l.
    apply vsum_ext; intros v. unfold bexcess.
    pose proof (min_plus_excess (pi * p c v) (q c v)) as E. rewrite Rmin_comm in E.
    transitivity ((Rmin (q c v) (pi * p c v) + Rmax (pi * p c v - q c v) 0) * T v); [lra|].
    rewrite E. unfold T. lra.
Qed.

Theorem block_iteration_lossless k : iteration_lossless vocab p (blk_iteration k).
Proof.
  intros G m HG c n f Hn. unfold blk_iteration, blk_verify.
  rewrite (draft_avg_ext vocab q _ _ _
             (fun xs => above G xs c 1 n f + hlev c 1 (length xs) * none_above c 1 xs * bemit G c 1 (length xs) n f))
    by (intros xs _; rewrite hlev_one; lra).
  rewrite (level_avg G m HG k c 1 n f) by (lra || exact Hn). lra.
Qed.

End Block.

(** The decoding loop with block verification: every draft length [k], every number of
    iterations, every horizon [n <= fuel]. *)
Theorem block_lossless {A : Type} (vocab : list A) (p q : Model A) (k : nat) :
  is_model vocab p -> is_model vocab q ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (blk_iteration vocab p q k) fuel c n f = target vocab p c n f.
Proof.
  intros Hp Hq fuel. apply decode_lossless. apply block_iteration_lossless; assumption.
Qed.

Corollary block_lossless_prob {A : Type} (vocab : list A) (p q : Model A) (k : nat)
  (eq_dec : forall x y : A, {x = y} + {x <> y}) :
  is_model vocab p -> is_model vocab q -> NoDup vocab ->
  forall c (ys : list A), (forall y, In y ys -> In y vocab) ->
  decode (blk_iteration vocab p q k) (length ys) c (length ys) (indicator eq_dec ys) = seq_prob p c ys.
Proof.
  intros Hp Hq Hnd c ys Hys.
  rewrite (block_lossless vocab p q k Hp Hq (length ys)) by lia.
  apply target_prob; assumption.
Qed.
