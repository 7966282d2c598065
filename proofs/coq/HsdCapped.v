(** * HsdCapped.v -- HSD with capped branch resampling is block verification, hence lossless.

    Zhou et al., "Overcoming Joint Intractability with Lossless Hierarchical Speculative Decoding"
    (arXiv 2601.05724, Alg. 2, eqs. 16-20), as hsd_ref/schemes/hsd_capped.py implements it, on
    joint masses instead of block verification's clamped ratio:
    - joint prefix masses P_t = prod p_i(x_i), Q_t = prod q_i(x_i) and the cap
      M_t = max(1, r_1, .., r_t) with r_t = P_t / Q_t;
    - at an intermediate level t the capped branch excess plus(v) = max(P_t p(v) / M_t - Q_t q(v), 0)
      and deficit minus(v) = max(Q_t q(v) - P_t p(v) / M_t, 0) (rows after x_1..x_t); the test is
      sum plus / sum minus (1 when sum minus = 0); the residual is plus normalised (the target
      row when plus is empty);
    - the last level's test is min(r_k / M_{k-1}, 1);
    - a drafted token of draft probability 0 cuts the draft (hsd_ref's [joint_masses]): every later
      test is 0 and every later level emits from the target row;
    - the same backward scan as block verification (tau = the largest level whose test succeeds).

    [hsd_eq_block]: averaged over the draft, one HSD iteration IS one block-verification iteration
    (Block.v), because along every draft of positive probability P_t / (Q_t M_t) is block
    verification's clamped ratio pi_t (the Lindley identity, [step_pi]) and then the HSD tests and
    residuals are block verification's ([hmid_eq], [final_eq], [hresidual_eq]); drafts of
    probability 0 carry no weight.  [hsd_capped_lossless]: hence the decoding loop is lossless for
    every draft length and horizon (Block.v [block_iteration_lossless]).
*)

From Coq Require Import Reals Lra Lia List Bool.
From HSD Require Import Common Block.
Import ListNotations.
Local Open Scope R_scope.

Lemma div_le_one (a M : R) : 0 < M -> a <= M -> a / M <= 1.
Proof.
  intros HM Ha. unfold Rdiv. pose proof (Rinv_0_lt_compat M HM).
  pose proof (Rinv_r M (Rgt_not_eq _ _ HM)). nra.
Qed.

Lemma div_gt_one (a M : R) : 0 < M -> M < a -> 1 < a / M.
Proof.
  intros HM Ha. unfold Rdiv. pose proof (Rinv_0_lt_compat M HM).
  pose proof (Rinv_r M (Rgt_not_eq _ _ HM)). nra.
Qed.

Lemma Rmax_scale (s y : R) : 0 < s -> Rmax (s * y) 0 = s * Rmax y 0.
Proof. intros Hs. unfold Rmax. destruct (Rle_dec (s * y) 0); destruct (Rle_dec y 0); nra. Qed.

Section Hsd.
Context {A : Type} (vocab : list A) (p q : Model A).

Local Notation vsum := (vsum vocab).

(** hsd_ref [HSDCapped.plan], branch t: the capped excess and deficit of the children. *)
Definition hplus (c : list A) (P Q M : R) (v : A) : R := Rmax (P * p c v / M - Q * q c v) 0.
Definition hminus (c : list A) (P Q M : R) (v : A) : R := Rmax (Q * q c v - P * p c v / M) 0.

Definition hmid (c : list A) (P Q M : R) : R :=
  if Req_EM_T (vsum (hminus c P Q M)) 0 then 1 else vsum (hplus c P Q M) / vsum (hminus c P Q M).

Definition hresidual (c : list A) (P Q M : R) (v : A) : R :=
  if Req_EM_T (vsum (hplus c P Q M)) 0 then p c v else hplus c P Q M v / vsum (hplus c P Q M).

(** Joint masses and the cap after drafting [x]; [usable]: hsd_ref's [joint_masses] keeps [x]. *)
Definition usable (c : list A) (x : A) : bool := if Req_EM_T (q c x) 0 then false else true.
Definition nextP (c : list A) (P : R) (x : A) : R := P * p c x.
Definition nextQ (c : list A) (Q : R) (x : A) : R := Q * q c x.
Definition nextM (c : list A) (P Q M : R) (x : A) : R := Rmax M (nextP c P x / nextQ c Q x).

(** The test of the level reached by drafting [x] ([nabove] draft tokens above it). *)
Definition hchance (c : list A) (P Q M : R) (live : bool) (x : A) (nabove : nat) : R :=
  if live && usable c x then
    match nabove with
    | O => Rmin (nextP c P x / nextQ c Q x / M) 1                       (* min(r_k / M_{k-1}, 1) *)
    | S _ => hmid (c ++ [x]) (nextP c P x) (nextQ c Q x) (nextM c P Q M x)
    end
  else 0.

(** The token emitted when the scan stops at a level. *)
Definition hemit (G : Kont A) (c : list A) (P Q M : R) (live : bool) (nabove : nat) (n : nat) (f : list A -> R) : R :=
  match nabove with
  | O => vsum (fun v => p c v * emit v G c n f)                           (* bonus token *)
  | S _ =>
      if live then vsum (fun v => hresidual c P Q M v * emit v G c n f)   (* capped residual *)
      else vsum (fun v => p c v * emit v G c n f)                          (* after a cut *)
  end.

Fixpoint hnone (c : list A) (P Q M : R) (live : bool) (xs : list A) : R :=
  match xs with
  | [] => 1
  | x :: xs' =>
      (1 - hchance c P Q M live x (length xs'))
      * hnone (c ++ [x]) (nextP c P x) (nextQ c Q x) (nextM c P Q M x) (live && usable c x) xs'
  end.

Fixpoint habove (G : Kont A) (xs : list A) (c : list A) (P Q M : R) (live : bool) (n : nat) (f : list A -> R) : R :=
  match xs with
  | [] => 0
  | x :: xs' =>
      let P' := nextP c P x in
      let Q' := nextQ c Q x in
      let M' := nextM c P Q M x in
      let live' := live && usable c x in
      let h := hchance c P Q M live x (length xs') in
      emit x (fun c' n' f' =>
                habove G xs' c' P' Q' M' live' n' f'
                + h * hnone c' P' Q' M' live' xs' * hemit G c' P' Q' M' live' (length xs') n' f')
        c n f
  end.

Definition hsd_verify (G : Kont A) (xs : list A) (c : list A) (n : nat) (f : list A -> R) : R :=
  habove G xs c 1 1 1 true n f + hnone c 1 1 1 true xs * hemit G c 1 1 1 true (length xs) n f.

Definition hsd_iteration (k : nat) : Iteration :=
  fun G c n f => draft_avg vocab q k c (fun xs => hsd_verify G xs c n f).

Hypothesis Hp : is_model vocab p.
Hypothesis Hq : is_model vocab q.

(** The invariant along a draft of positive probability: M >= 1 and M >= P / Q. *)
Definition inv (P Q M : R) : Prop := 0 < Q /\ 0 <= P /\ 1 <= M /\ P <= M * Q.

Definition pi_of (P Q M : R) : R := P / (Q * M).

Lemma pi_range P Q M : inv P Q M -> 0 <= pi_of P Q M <= 1.
Proof.
  intros (HQ & HP & HM & HPM). unfold pi_of. split.
  - unfold Rdiv. apply Rmult_le_pos; [lra|]. left. apply Rinv_0_lt_compat. nra.
  - apply div_le_one; nra.
Qed.

Lemma q_pos c x : q c x <> 0 -> 0 < q c x.
Proof. intros H. destruct (Hq c) as [Hpos _]. specialize (Hpos x). lra. Qed.

Lemma step_inv c P Q M x : inv P Q M -> q c x <> 0 -> inv (nextP c P x) (nextQ c Q x) (nextM c P Q M x).
Proof.
  intros (HQ & HP & HM & HPM) Hx. pose proof (q_pos c x Hx) as Hqx.
  destruct (Hp c) as [Hppos _]. specialize (Hppos x).
  unfold inv, nextM, nextP, nextQ. repeat split.
  - nra.
  - nra.
  - unfold Rmax. destruct (Rle_dec M _); lra.
  - assert (HQ' : 0 < Q * q c x) by nra.
    assert (E : P * p c x = (P * p c x / (Q * q c x)) * (Q * q c x)) by (field; lra).
    rewrite E at 1. apply Rmult_le_compat_r; [lra|]. apply Rmax_r.
Qed.

(** The Lindley identity in joint masses: r_{t+1} / M_{t+1} = min(1, pi_t p(x) / q(x)). *)
Lemma step_pi c P Q M x : inv P Q M -> q c x <> 0 ->
  pi_of (nextP c P x) (nextQ c Q x) (nextM c P Q M x) = clamp p q c (pi_of P Q M) x.
Proof.
  intros (HQ & HP & HM & HPM) Hx. pose proof (q_pos c x Hx) as Hqx.
  destruct (Hp c) as [Hppos _]. specialize (Hppos x).
  unfold nextM, pi_of, clamp, nextP, nextQ. destruct (Req_EM_T (q c x) 0) as [H0|_]; [contradiction|].
  set (a := P * p c x / (Q * q c x)).
  assert (Ha : 0 <= a) by (unfold a, Rdiv; apply Rmult_le_pos; [nra|left; apply Rinv_0_lt_compat; nra]).
  assert (E1 : P * p c x / (Q * q c x * Rmax M a) = a / Rmax M a).
  { unfold a, Rdiv. rewrite Rinv_mult. ring. }
  assert (E2 : P / (Q * M) * p c x / q c x = a / M).
  { unfold a, Rdiv. rewrite !Rinv_mult. ring. }
  rewrite E1, E2. unfold Rmax, Rmin. destruct (Rle_dec M a) as [Hle|Hlt].
  - destruct (Rle_dec 1 (a / M)) as [H1|H1].
    + field. lra.
    + destruct (Req_dec a M) as [->|Hne]; [field; lra|].
      exfalso. apply H1. left. apply div_gt_one; lra.
  - apply Rnot_le_lt in Hlt.
    destruct (Rle_dec 1 (a / M)) as [H1|H1].
    + pose proof (div_le_one a M ltac:(lra) ltac:(lra)). assert (a / M = 1) by lra. lra.
    + reflexivity.
Qed.

Lemma hplus_eq c P Q M v : inv P Q M -> hplus c P Q M v = Q * bexcess p q c (pi_of P Q M) v.
Proof.
  intros (HQ & HP & HM & HPM). unfold hplus, bexcess, pi_of.
  rewrite <- Rmax_scale by exact HQ. f_equal. field. lra.
Qed.

Lemma hminus_eq c P Q M v : inv P Q M ->
  hminus c P Q M v = Q * (q c v - Rmin (q c v) (pi_of P Q M * p c v)).
Proof.
  intros Hinv. destruct Hinv as (HQ & HP & HM & HPM). unfold hminus, pi_of.
  pose proof (min_plus_deficit (P / (Q * M) * p c v) (q c v)) as E.
  rewrite Rmin_comm in E.
  assert (E' : q c v - Rmin (q c v) (P / (Q * M) * p c v) = Rmax (q c v - P / (Q * M) * p c v) 0) by lra.
  rewrite E', <- Rmax_scale by exact HQ. f_equal. field. lra.
Qed.

Lemma sum_hplus c P Q M : inv P Q M -> vsum (hplus c P Q M) = Q * bS vocab p q c (pi_of P Q M).
Proof.
  intros Hinv. unfold bS. rewrite <- vsum_scal_l. apply vsum_ext; intros v. apply hplus_eq, Hinv.
Qed.

Lemma sum_hminus c P Q M : inv P Q M -> vsum (hminus c P Q M) = Q * (bS vocab p q c (pi_of P Q M) + 1 - pi_of P Q M).
Proof.
  intros Hinv. rewrite <- (deficit_sum vocab p q Hp Hq), <- vsum_scal_l.
  apply vsum_ext; intros v. apply hminus_eq, Hinv.
Qed.

Lemma hmid_eq c P Q M : inv P Q M -> hmid c P Q M = Block.hmid vocab p q c (pi_of P Q M).
Proof.
  intros Hinv. pose proof Hinv as (HQ & _). unfold hmid, Block.hmid.
  rewrite (sum_hplus c P Q M Hinv), (sum_hminus c P Q M Hinv).
  destruct (Req_EM_T (Q * (bS vocab p q c (pi_of P Q M) + 1 - pi_of P Q M)) 0) as [H0|H0];
    destruct (Req_EM_T (bS vocab p q c (pi_of P Q M) + 1 - pi_of P Q M) 0) as [H1|H1].
  - reflexivity.
  - exfalso. apply Rmult_integral in H0. lra.
  - exfalso. apply H0. rewrite H1. ring.
  - field. split; [exact H1|lra].
Qed.

Lemma hresidual_eq c P Q M v : inv P Q M -> hresidual c P Q M v = bresidual vocab p q c (pi_of P Q M) v.
Proof.
  intros Hinv. pose proof Hinv as (HQ & _). unfold hresidual, bresidual.
  rewrite (sum_hplus c P Q M Hinv), (hplus_eq c P Q M v Hinv).
  destruct (Req_EM_T (Q * bS vocab p q c (pi_of P Q M)) 0) as [H0|H0];
    destruct (Req_EM_T (bS vocab p q c (pi_of P Q M)) 0) as [H1|H1].
  - reflexivity.
  - exfalso. apply Rmult_integral in H0. lra.
  - exfalso. apply H0. rewrite H1. ring.
  - field. split; [exact H1|lra].
Qed.

Lemma final_eq c P Q M x : inv P Q M -> q c x <> 0 ->
  Rmin (nextP c P x / nextQ c Q x / M) 1 = clamp p q c (pi_of P Q M) x.
Proof.
  intros (HQ & HP & HM & HPM) Hx. pose proof (q_pos c x Hx).
  unfold clamp, nextP, nextQ, pi_of. destruct (Req_EM_T (q c x) 0) as [H0|_]; [contradiction|].
  rewrite Rmin_comm. f_equal. field. lra.
Qed.

Lemma hchance_eq c P Q M x j : inv P Q M -> q c x <> 0 ->
  hchance c P Q M true x j = hlev vocab p q (c ++ [x]) (clamp p q c (pi_of P Q M) x) j.
Proof.
  intros Hinv Hx. unfold hchance. simpl andb. unfold usable.
  destruct (Req_EM_T (q c x) 0) as [H0|_]; [contradiction|].
  destruct j as [|j]; simpl.
  - apply final_eq; assumption.
  - rewrite hmid_eq by (apply step_inv; assumption). rewrite step_pi by assumption. reflexivity.
Qed.

Lemma hemit_eq G c P Q M j n f : inv P Q M ->
  hemit G c P Q M true j n f = bemit vocab p q G c (pi_of P Q M) j n f.
Proof.
  intros Hinv. destruct j as [|j]; simpl; [reflexivity|].
  apply vsum_ext; intros v. rewrite hresidual_eq by exact Hinv. reflexivity.
Qed.

Lemma usable_true c x : q c x <> 0 -> usable c x = true.
Proof. intros H. unfold usable. destruct (Req_EM_T (q c x) 0); [contradiction|reflexivity]. Qed.

(** Averaged over the drafts above a level, the chance that no test above it succeeds. *)
Lemma hnone_avg j : forall c P Q M, inv P Q M ->
  draft_avg vocab q j c (hnone c P Q M true) = draft_avg vocab q j c (none_above vocab p q c (pi_of P Q M)).
Proof.
  induction j as [|j IH]; intros c P Q M Hinv.
  - rewrite !draft_avg_0. reflexivity.
  - rewrite !draft_avg_S. apply vsum_ext; intros x.
    destruct (Req_EM_T (q c x) 0) as [H0|Hx]; [rewrite H0; ring|]. f_equal.
    simpl hnone. simpl none_above. rewrite (usable_true c x Hx). simpl andb.
    rewrite (draft_avg_ext vocab q _ _ _ (fun xs => (1 - hchance c P Q M true x j) *
               hnone (c ++ [x]) (nextP c P x) (nextQ c Q x) (nextM c P Q M x) true xs))
      by (intros xs Hl; rewrite Hl; reflexivity).
    rewrite (draft_avg_ext vocab q _ _ (fun xs => _ * none_above vocab p q (c ++ [x]) _ xs)
               (fun xs => (1 - hlev vocab p q (c ++ [x]) (clamp p q c (pi_of P Q M) x) j) *
                          none_above vocab p q (c ++ [x]) (clamp p q c (pi_of P Q M) x) xs))
      by (intros xs Hl; rewrite Hl; reflexivity).
    rewrite !draft_avg_scal, IH by (apply step_inv; assumption).
    rewrite step_pi, hchance_eq by assumption. reflexivity.
Qed.

(** Averaged over the drafts above a level, the part of the law whose tau lies above it. *)
Lemma habove_avg G j : forall c P Q M n f, inv P Q M ->
  draft_avg vocab q j c (fun xs => habove G xs c P Q M true n f)
  = draft_avg vocab q j c (fun xs => above vocab p q G xs c (pi_of P Q M) n f).
Proof.
  induction j as [|j IH]; intros c P Q M n f Hinv.
  - rewrite !draft_avg_0. reflexivity.
  - rewrite !draft_avg_S. apply vsum_ext; intros x.
    destruct (Req_EM_T (q c x) 0) as [H0|Hx]; [rewrite H0; ring|]. f_equal.
    simpl habove. simpl above. rewrite (usable_true c x Hx). simpl andb.
    rewrite !draft_avg_emit. apply emit_ext; intros n' f' _.
    pose proof (step_inv c P Q M x Hinv Hx) as Hinv'.
    rewrite !draft_avg_plus. f_equal.
    + rewrite IH by exact Hinv'. rewrite step_pi by assumption. reflexivity.
    + rewrite (draft_avg_ext vocab q _ _ _ (fun xs =>
                 (hchance c P Q M true x j * hemit G (c ++ [x]) (nextP c P x) (nextQ c Q x) (nextM c P Q M x) true j n' f')
                 * hnone (c ++ [x]) (nextP c P x) (nextQ c Q x) (nextM c P Q M x) true xs))
        by (intros xs Hl; rewrite Hl; ring).
      rewrite (draft_avg_ext vocab q _ _ (fun xs => _ * none_above vocab p q (c ++ [x]) _ xs * _)
                 (fun xs => (hlev vocab p q (c ++ [x]) (clamp p q c (pi_of P Q M) x) j
                             * bemit vocab p q G (c ++ [x]) (clamp p q c (pi_of P Q M) x) j n' f')
                            * none_above vocab p q (c ++ [x]) (clamp p q c (pi_of P Q M) x) xs))
        by (intros xs Hl; rewrite Hl; ring).
      rewrite !draft_avg_scal, hnone_avg by exact Hinv'.
      rewrite hemit_eq by exact Hinv'. rewrite step_pi, hchance_eq by assumption. reflexivity.
Qed.

Lemma inv_start : inv 1 1 1.
Proof. unfold inv; lra. Qed.

Lemma pi_start : pi_of 1 1 1 = 1.
Proof. unfold pi_of. field. Qed.

(** Averaged over the draft, one HSD iteration is one block-verification iteration. *)
Theorem hsd_eq_block k G c n f : hsd_iteration k G c n f = blk_iteration vocab p q k G c n f.
Proof.
  unfold hsd_iteration, blk_iteration, hsd_verify, blk_verify.
  rewrite !draft_avg_plus. f_equal.
  - rewrite habove_avg by exact inv_start. rewrite pi_start. reflexivity.
  - rewrite (draft_avg_ext vocab q _ _ _ (fun xs => hemit G c 1 1 1 true k n f * hnone c 1 1 1 true xs))
      by (intros xs Hl; rewrite Hl; ring).
    rewrite (draft_avg_ext vocab q _ _ (fun xs => none_above vocab p q c 1 xs * _)
               (fun xs => bemit vocab p q G c 1 k n f * none_above vocab p q c 1 xs))
      by (intros xs Hl; rewrite Hl; ring).
    rewrite !draft_avg_scal, hnone_avg by exact inv_start.
    rewrite hemit_eq by exact inv_start. rewrite pi_start. reflexivity.
Qed.

Theorem hsd_iteration_lossless k : iteration_lossless vocab p (hsd_iteration k).
Proof.
  intros G m HG c n f Hn. rewrite hsd_eq_block.
  apply (block_iteration_lossless vocab p q Hp Hq k G m HG c n f Hn).
Qed.

End Hsd.

(** The decoding loop with HSD capped verification: every draft length, every horizon. *)
Theorem hsd_capped_lossless {A : Type} (vocab : list A) (p q : Model A) (k : nat) :
  is_model vocab p -> is_model vocab q ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (hsd_iteration vocab p q k) fuel c n f = target vocab p c n f.
Proof.
  intros Hp Hq fuel. apply decode_lossless. apply hsd_iteration_lossless; assumption.
Qed.
